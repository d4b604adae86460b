"""Metric tests: KDSR-classic PSNR/SSIM-Y and the BasicSR variants (EVALUATION.md §1.5,
§2.3) against independent formulas (plain NumPy, scikit-image) on real photographs."""

import numpy as np
import pytest
import skimage.data
import skimage.filters
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from kdsr_jax import evaluate
from kdsr_jax.evaluate import metrics


def _degraded_pair(name, kind, seed=0):
    """(sr, hr) uint8 images: a real photo and a noisy or blurred copy of it."""
    hr = getattr(skimage.data, name)()[:160, :200, :3]
    rng = np.random.default_rng(seed)
    x = hr.astype(np.float64) / 255.0
    if kind == "noise":
        x = x + rng.normal(0.0, 0.04, x.shape)
    else:
        x = skimage.filters.gaussian(x, sigma=1.3, channel_axis=-1)
    sr = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    return sr, hr


PAIRS = [("astronaut", "noise"), ("chelsea", "blur"), ("coffee", "noise"),
         ("coffee", "blur")]


def _y_numpy(img, coeffs, div, off):
    f = img.astype(np.float64)
    return (coeffs[0] * f[..., 0] + coeffs[1] * f[..., 1] + coeffs[2] * f[..., 2]) / div + off


@pytest.mark.parametrize("name,kind", PAIRS)
def test_psnr_y_matches_skimage_psnr_on_classic_y_channel(name, kind):
    sr, hr = _degraded_pair(name, kind)
    s = 4
    ys = _y_numpy(sr / 255.0, (65.738, 129.057, 25.064), 256.0, 16 / 255)[s:-s, s:-s]
    yh = _y_numpy(hr / 255.0, (65.738, 129.057, 25.064), 256.0, 16 / 255)[s:-s, s:-s]
    ref = peak_signal_noise_ratio(yh, ys, data_range=1.0)
    assert evaluate.psnr_y(sr, hr, s) == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("name,kind", PAIRS)
def test_ssim_y_matches_skimage_gaussian_ssim_on_classic_y_channel(name, kind):
    sr, hr = _degraded_pair(name, kind)
    s = 4
    ys = _y_numpy(sr, (65.738, 129.057, 25.064), 255.0, 16.0)[s:-s, s:-s]
    yh = _y_numpy(hr, (65.738, 129.057, 25.064), 255.0, 16.0)[s:-s, s:-s]
    # skimage: Gaussian sigma 1.5 truncated at 3.5 sigma = 11x11 window, population
    # covariance, border of 5 px cropped from the SSIM map = 'valid' filtering.
    ref = structural_similarity(yh, ys, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=255.0)
    assert evaluate.ssim_y(sr, hr, s) == pytest.approx(ref, abs=1e-10)


@pytest.mark.parametrize("name,kind", PAIRS)
def test_basicsr_variants_match_skimage_on_basicsr_y_channel(name, kind):
    sr, hr = _degraded_pair(name, kind)
    ys = _y_numpy(sr, (65.481, 128.553, 24.966), 255.0, 16.0)[4:-4, 4:-4]
    yh = _y_numpy(hr, (65.481, 128.553, 24.966), 255.0, 16.0)[4:-4, 4:-4]
    ref_psnr = peak_signal_noise_ratio(yh, ys, data_range=255.0)
    ref_ssim = structural_similarity(yh, ys, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=255.0)
    # dm-pix computes the PSNR in float32: 1e-4 dB is far below the reported 0.01 dB.
    assert evaluate.psnr_y_basicsr(sr, hr) == pytest.approx(ref_psnr, abs=1e-4)
    assert evaluate.ssim_y_basicsr(sr, hr) == pytest.approx(ref_ssim, abs=1e-10)


def test_classic_and_basicsr_psnr_agree_to_coefficient_precision():
    sr, hr = _degraded_pair("astronaut", "noise")
    # EVALUATION.md §1.5: 65.738/256 vs 65.481/255 etc. differ by ~1e-5 relative.
    assert evaluate.psnr_y(sr, hr, 4) == pytest.approx(evaluate.psnr_y_basicsr(sr, hr),
                                                       abs=2e-3)


def test_float_inputs_are_quantised_like_the_testers():
    sr, hr = _degraded_pair("chelsea", "noise")
    jitter = np.random.default_rng(1).uniform(-0.45, 0.45, sr.shape) / 255.0
    sr_f = sr / 255.0 + jitter  # rounds back to the same 8-bit levels
    hr_f = hr.astype(np.float32) / 255.0
    assert evaluate.psnr_y(sr_f, hr_f, 4) == evaluate.psnr_y(sr, hr, 4)
    assert evaluate.ssim_y(sr_f, hr_f, 4) == evaluate.ssim_y(sr, hr, 4)
    # Out-of-range floats are clipped before rounding, as utility.quantize does.
    over = sr_f.copy()
    over[sr == 255] = 1.7
    assert evaluate.psnr_y(over, hr_f, 4) == evaluate.psnr_y(sr, hr, 4)


def test_shave_equals_scale_so_border_pixels_do_not_count():
    sr, hr = _degraded_pair("coffee", "blur")
    bad = sr.copy()
    bad[:2] = 0
    bad[:, -2:] = 255
    assert evaluate.psnr_y(bad, hr, 2) == evaluate.psnr_y(sr, hr, 2)
    assert evaluate.ssim_y(bad, hr, 2) == evaluate.ssim_y(sr, hr, 2)
    assert evaluate.psnr_y(bad, hr, 1) < evaluate.psnr_y(sr, hr, 1)


def test_identical_images_give_infinite_psnr_and_unit_ssim():
    _, hr = _degraded_pair("astronaut", "noise")
    assert evaluate.psnr_y(hr, hr, 4) == float("inf")
    assert evaluate.ssim_y(hr, hr, 4) == pytest.approx(1.0, abs=1e-12)


def test_ssim_window_is_the_normalised_11x11_gaussian():
    w = metrics._gaussian_window()
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    np.testing.assert_allclose(w, np.outer(g, g) / g.sum() ** 2, rtol=1e-14)


def test_bad_inputs_raise_one_line_value_errors():
    a = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="shapes differ"):
        evaluate.psnr_y(a, np.zeros((32, 30, 3), np.uint8), 4)
    with pytest.raises(ValueError, match="RGB"):
        evaluate.ssim_y(a[..., 0], a[..., 0], 4)
    with pytest.raises(ValueError, match="too small"):
        evaluate.psnr_y(a[:8, :8], a[:8, :8], 4)
