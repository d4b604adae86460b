"""Image-quality metrics exactly as KDSR reports them (reference/EVALUATION.md §1.5, §2.3).

Two families, kept under distinct names because they differ in the last digits:

* `psnr_y`, `ssim_y` — the KDSR-classic testers (`utility.calc_psnr` / `calc_ssim`), used
  for Tables 1 and 2. PSNR on the Y *difference* with the /256 BT.601 coefficients and
  peak 1; SSIM on a Y channel computed from 8-bit values with the same coefficients but
  divided by 255 (+16). Both shave `scale` pixels per side. Our own float64 NumPy code:
  no library implements these exact variants.
* `psnr_y_basicsr`, `ssim_y_basicsr` — BasicSR's `calculate_psnr/ssim(crop_border=4,
  test_y_channel=True)`, used for the KDSR-GAN tables (Table 3): Y on the [0, 255] scale
  from the /255 coefficients, float (not rounded), PSNR peak 255. The PSNR is dm-pix's
  `psnr` applied to Y/255 (the textbook formula fits exactly); the SSIM shares our
  float64 SSIM core (dm-pix's SSIM runs in float32 and clips variances, which the
  OpenCV-based reference does not).

Inputs: one image as uint8 (H, W, 3) RGB, or float in [0, 1] (H, W, 3) which is first
quantised to 8 bits (`round(clip(255 x, 0, 255))`) as the testers do. Both images must
have the same shape. Results are Python floats.
"""

from __future__ import annotations

import numpy as np

# EVALUATION.md §1.5 — Y coefficients of the classic testers (applied as /256 for PSNR,
# /255 for SSIM).
CLASSIC_Y_COEFFS = (65.738, 129.057, 25.064)
CLASSIC_PSNR_Y_DIVISOR = 256.0
CLASSIC_SSIM_Y_DIVISOR = 255.0
# EVALUATION.md §2.3 — BasicSR's rgb2ycbcr(y_only=True) coefficients (R, G, B), /255.
BASICSR_Y_COEFFS = (65.481, 128.553, 24.966)
BASICSR_CROP_BORDER = 4
Y_OFFSET = 16.0
# EVALUATION.md §1.5 — SSIM window and constants (cv2.getGaussianKernel(11, 1.5)).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_DATA_RANGE = 255.0


def to_uint8_levels(img) -> np.ndarray:
    """8-bit levels 0..255 as float64 (H, W, 3): uint8 as is, floats quantised."""
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"expected uint8 or float [0,1] pixels, got dtype {a.dtype}")
    return np.round(np.clip(a.astype(np.float64) * 255.0, 0.0, 255.0))


def _check_pair(sr, hr):
    sr, hr = to_uint8_levels(sr), to_uint8_levels(hr)
    if sr.shape != hr.shape:
        raise ValueError(f"image shapes differ: {sr.shape} vs {hr.shape}")
    return sr, hr


def _shave(a: np.ndarray, border: int) -> np.ndarray:
    if border <= 0:
        return a
    if a.shape[0] <= 2 * border or a.shape[1] <= 2 * border:
        raise ValueError(f"image {a.shape[:2]} too small to shave {border} px per side")
    return a[border:-border, border:-border]


def _y(levels: np.ndarray, coeffs, divisor: float, offset: float) -> np.ndarray:
    r, g, b = levels[..., 0], levels[..., 1], levels[..., 2]
    return (coeffs[0] * r + coeffs[1] * g + coeffs[2] * b) / divisor + offset


def _psnr_from_mse(mse: float, peak: float) -> float:
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(peak * peak / mse))


def _gaussian_window() -> np.ndarray:
    """11x11 outer product of the normalised 1-D Gaussian (sigma 1.5)."""
    x = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    g = np.exp(-(x * x) / (2 * SSIM_SIGMA * SSIM_SIGMA))
    g /= g.sum()
    return np.outer(g, g)


def _filter_valid(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """'valid' 2-D correlation of a (H, W) with w (k, k), float64."""
    k = w.shape[0]
    h, wd = a.shape[0] - k + 1, a.shape[1] - k + 1
    if h <= 0 or wd <= 0:
        raise ValueError(f"image {a.shape} smaller than the {k}x{k} SSIM window")
    out = np.zeros((h, wd), np.float64)
    for i in range(k):
        for j in range(k):
            out += w[i, j] * a[i:i + h, j:j + wd]
    return out


def ssim_gray(a: np.ndarray, b: np.ndarray, data_range: float = SSIM_DATA_RANGE) -> float:
    """Mean SSIM of two single-channel float64 images: 11x11 Gaussian (sigma 1.5)
    window, local statistics over the 'valid' region only, C1 = (0.01 L)^2,
    C2 = (0.03 L)^2, no clipping of variances (as cv2.filter2D-based SSIM)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    w = _gaussian_window()
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, w), _filter_valid(b, w)
    s_aa = _filter_valid(a * a, w) - mu_a * mu_a
    s_bb = _filter_valid(b * b, w) - mu_b * mu_b
    s_ab = _filter_valid(a * b, w) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (s_aa + s_bb + c2)
    return float(np.mean(num / den))


def psnr_y(sr, hr, scale: int) -> float:
    """KDSR-classic PSNR (EVALUATION.md §1.5 step 2): quantise both images, take the
    Y difference (65.738 dR + 129.057 dG + 25.064 dB)/256 on [0,1] values, shave `scale`
    pixels per side, PSNR with peak 1. Own float64 code."""
    sr, hr = _check_pair(sr, hr)
    dy = _y((sr - hr) / 255.0, CLASSIC_Y_COEFFS, CLASSIC_PSNR_Y_DIVISOR, 0.0)
    dy = _shave(dy, int(scale))
    return _psnr_from_mse(float(np.mean(dy * dy)), 1.0)


def ssim_y(sr, hr, scale: int) -> float:
    """KDSR-classic SSIM (EVALUATION.md §1.5 step 3): on 8-bit levels,
    Y = (65.738 R + 129.057 G + 25.064 B)/255 + 16, shave `scale` px per side, Gaussian
    SSIM ('valid', float64). Own float64 code."""
    sr, hr = _check_pair(sr, hr)
    ys = _shave(_y(sr, CLASSIC_Y_COEFFS, CLASSIC_SSIM_Y_DIVISOR, Y_OFFSET), int(scale))
    yh = _shave(_y(hr, CLASSIC_Y_COEFFS, CLASSIC_SSIM_Y_DIVISOR, Y_OFFSET), int(scale))
    return ssim_gray(ys, yh)


def _basicsr_y(img, crop_border: int) -> np.ndarray:
    y = _y(img, BASICSR_Y_COEFFS, 255.0, Y_OFFSET)
    return _shave(y, int(crop_border))


def psnr_y_basicsr(sr, hr, crop_border: int = BASICSR_CROP_BORDER) -> float:
    """BasicSR `calculate_psnr(crop_border=4, test_y_channel=True)` (EVALUATION.md
    §2.3): float Y = (65.481 R + 128.553 G + 24.966 B)/255 + 16 on 8-bit levels, crop,
    PSNR with peak 255. Computed with dm-pix's `psnr` on Y/255 (identical formula)."""
    import dm_pix
    import jax.numpy as jnp

    sr, hr = _check_pair(sr, hr)
    ys, yh = _basicsr_y(sr, crop_border), _basicsr_y(hr, crop_border)
    if np.array_equal(ys, yh):
        return float("inf")
    return float(dm_pix.psnr(jnp.asarray(ys[..., None] / 255.0), jnp.asarray(yh[..., None] / 255.0)))


def ssim_y_basicsr(sr, hr, crop_border: int = BASICSR_CROP_BORDER) -> float:
    """BasicSR `calculate_ssim(crop_border=4, test_y_channel=True)`: same float Y as
    `psnr_y_basicsr`, then the Gaussian SSIM of `ssim_gray` (own float64 code)."""
    sr, hr = _check_pair(sr, hr)
    return ssim_gray(_basicsr_y(sr, crop_border), _basicsr_y(hr, crop_border))
