"""JPEG compression artefacts as in BasicSR's DiffJPEG (Real-ESRGAN degradation).

KDSR-GAN degrades its training images twice with JPEG (reference DEGRADATION.md §2.2
steps 4 and 8) using ``basicsr.utils.diffjpeg.DiffJPEG(differentiable=False)``, a pure
tensor JPEG model. This module follows the steps listed in DEGRADATION.md §2.4:

1. per-image quality -> factor ``50/q`` (q < 50) or ``2 - q/50`` (float32 for array
   qualities, float64 for python numbers, as torch does); the quantisation tables are
   scaled by the factor but **not** rounded or clipped;
2. zero padding at the bottom/right to multiples of 16 (cropped away at the end);
3. RGB*255 -> YCbCr (JFIF, full range);
4. 4:2:0 chroma by 2x2 averaging;
5. 8x8 blocks, minus 128, orthonormal-scaled DCT-II;
6. quantise with round-half-to-even (``torch.round``), dequantise;
7. inverse DCT, chroma upsampling by 2x2 replication, YCbCr -> RGB, clamp [0, 255], /255.

The luma table is the standard JPEG luminance table *transposed*, as BasicSR uses it.
``differentiable=True`` replaces rounding by ``round(x) + (x - round(x))**3``.

Blocks are aligned at the top-left corner and the padding is zeros, so compressing an
image placed in the top-left corner of a larger zero canvas gives, inside the image,
exactly the result of compressing the image alone (the shape-static Real-ESRGAN pipeline
relies on this; the canvas must be zero outside the image up to the next multiple of 16,
and the output outside the image is not zero).

All arrays are NHWC float32 in [0, 1]; the DCT is a (64, 64) matrix product per block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Standard JPEG luminance table, rows = vertical frequency (DEGRADATION.md §2.4 step 6).
STD_LUMA_TABLE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
], np.float32)
# BasicSR uses it transposed: T_Y[u, v] = STD[v][u] (§2.4 step 6).
LUMA_TABLE = STD_LUMA_TABLE.T.copy()
# Chroma: 99 everywhere except the top-left 4x4 block (§2.4 step 6).
CHROMA_TABLE = np.full((8, 8), 99.0, np.float32)
CHROMA_TABLE[:4, :4] = np.array([
    [17, 18, 24, 47],
    [18, 21, 26, 66],
    [24, 26, 56, 99],
    [47, 66, 99, 99],
], np.float32)

# JFIF RGB -> YCbCr (§2.4 step 3); rows = output channel.
RGB_TO_YCBCR = np.array([
    [0.299, 0.587, 0.114],
    [-0.168736, -0.331264, 0.5],
    [0.5, -0.418688, -0.081312],
], np.float32)
YCBCR_SHIFT = np.array([0.0, 128.0, 128.0], np.float32)
# YCbCr -> RGB (§2.4 step 7); rows = output channel, applied to (Y, Cb-128, Cr-128).
YCBCR_TO_RGB = np.array([
    [1.0, 0.0, 1.402],
    [1.0, -0.344136, -0.714136],
    [1.0, 1.772, 0.0],
], np.float32)

BLOCK = 8  # DCT block size (§2.4 step 5)
MCU = 16  # padding multiple: 8x8 blocks of 2x-subsampled chroma (§2.4 step 2)
LEVEL_SHIFT = 128.0  # subtracted before the DCT (§2.4 step 5)
PIXEL_MAX = 255.0

_HIGHEST = jax.lax.Precision.HIGHEST


def _dct_basis() -> np.ndarray:
    """(64, 64) float32: [x*8+y, u*8+v] = cos((2x+1)u pi/16) cos((2y+1)v pi/16)."""
    k = np.arange(BLOCK, dtype=np.float64)
    c = np.cos((2.0 * k[:, None] + 1.0) * k[None, :] * np.pi / 16.0)  # [x, u]
    basis = np.einsum("xu,yv->xyuv", c, c)
    return basis.reshape(64, 64).astype(np.float32)


def _dct_scale() -> np.ndarray:
    """(64,) float32: 0.25 * alpha(u) * alpha(v), alpha(0) = 1/sqrt(2), else 1."""
    alpha = np.ones(BLOCK, np.float64)
    alpha[0] = 1.0 / np.sqrt(2.0)
    outer = np.outer(alpha, alpha).astype(np.float32).reshape(64)
    return (np.float32(0.25) * outer).astype(np.float32), outer


DCT_BASIS = _dct_basis()
DCT_SCALE, DCT_ALPHA = _dct_scale()


def quality_to_factor(quality):
    """Table scale for a quality: ``50/q`` below 50, else ``2 - q/50`` (§2.4 step 1).

    Python numbers are computed in float64 (then used as float32, as torch does with a
    python scalar); arrays in float32, as ``(5000/q)/100`` and ``(200 - 2q)/100``.
    """
    if isinstance(quality, (int, float, np.integer, np.floating)) and np.ndim(quality) == 0:
        q = float(quality)
        return np.float32((5000.0 / q) / 100.0 if q < 50 else (200.0 - q * 2.0) / 100.0)
    q = jnp.asarray(quality, jnp.float32)
    hundred = jnp.full_like(q, 100.0)
    low = _exact_div(_barrier(jnp.float32(5000.0) / q), hundred)
    high = _exact_div(jnp.float32(200.0) - q * jnp.float32(2.0), hundred)
    return jnp.where(q < 50.0, low, high)


def _barrier(x):
    return jax.lax.optimization_barrier(x)


def _exact_div(num, den):
    """IEEE float32 ``num / den`` (den broadcast to num's shape).

    XLA's algebraic simplifier rewrites ``a / broadcast(b)`` into ``a * (1/b)`` and
    ``(a / b) / c`` into ``a / (b * c)``; both change the rounding of a division that
    feeds ``round``. Hiding the materialised divisor behind an optimisation barrier
    keeps torch's single correctly rounded division.
    """
    return num / _barrier(jnp.broadcast_to(den, jnp.shape(num)))


def _round_half_even(x):
    return jnp.round(x)  # jnp.round rounds half to even, like torch.round


def _diff_round(x):
    r = jnp.round(x)
    return r + (x - r) ** 3


def _to_blocks(plane):
    """(B, H, W) -> (B, H/8, W/8, 64), row-major inside each block."""
    b, h, w = plane.shape
    x = plane.reshape(b, h // BLOCK, BLOCK, w // BLOCK, BLOCK)
    return x.transpose(0, 1, 3, 2, 4).reshape(b, h // BLOCK, w // BLOCK, BLOCK * BLOCK)


def _from_blocks(blocks):
    """(B, H/8, W/8, 64) -> (B, H, W)."""
    b, nh, nw, _ = blocks.shape
    x = blocks.reshape(b, nh, nw, BLOCK, BLOCK).transpose(0, 1, 3, 2, 4)
    return x.reshape(b, nh * BLOCK, nw * BLOCK)


def _jpeg_plane(plane, table, rounding):
    """DCT -> quantise -> dequantise -> IDCT of one (B, H, W) plane (level-shifted inside).

    table: (B, 1, 1, 64) scaled quantisation table per image.
    """
    basis = jnp.asarray(DCT_BASIS)
    blocks = _to_blocks(plane - LEVEL_SHIFT)
    coef = jnp.asarray(DCT_SCALE) * jnp.matmul(blocks, basis, precision=_HIGHEST)
    coef = rounding(_exact_div(coef, table)) * table
    coef = coef * jnp.asarray(DCT_ALPHA)
    pixels = jnp.float32(0.25) * jnp.matmul(coef, basis.T, precision=_HIGHEST) + LEVEL_SHIFT
    return _from_blocks(pixels)


def _check_inputs(img, quality):
    fn = "jpeg.compress"
    shape = getattr(img, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{fn}: expected an RGB NHWC batch (B, H, W, 3), got shape {shape}")
    if not jnp.issubdtype(img.dtype, jnp.floating):
        raise ValueError(f"{fn}: expected a floating-point image in [0, 1], "
                         f"got dtype {img.dtype}")
    q_shape = np.shape(quality)
    if q_shape not in ((), (shape[0],), (1,)):
        raise ValueError(f"{fn}: quality must be a scalar or one value per image "
                         f"(shape ({shape[0]},)), got shape {q_shape}")
    q_dtype = getattr(quality, "dtype", None)
    if q_dtype is not None and not (jnp.issubdtype(q_dtype, jnp.floating)
                                    or jnp.issubdtype(q_dtype, jnp.integer)):
        raise ValueError(f"{fn}: quality must be numeric, got dtype {q_dtype}")


def compress(img, quality, differentiable: bool = False):
    """JPEG-compress and decode a batch like BasicSR ``DiffJPEG``.

    Args:
      img: (B, H, W, 3) float RGB in [0, 1] (any H, W).
      quality: JPEG quality (about 1..100): a python number, a scalar array, or a (B,)
        array with one quality per image (traced values are fine).
      differentiable: use ``round(x) + (x - round(x))**3`` instead of rounding.
    Returns:
      (B, H, W, 3) float32 in [0, 1] (not re-quantised to 8 bit).
    """
    _check_inputs(img, quality)
    b, h, w, _ = img.shape
    factor = quality_to_factor(quality)
    factor = jnp.broadcast_to(jnp.asarray(factor, jnp.float32).reshape(-1), (b,))
    return _compress(img.astype(jnp.float32), factor, differentiable=differentiable)


def _compress_impl(img, factor, differentiable):
    b, h, w, _ = img.shape
    pad_h, pad_w = -h % MCU, -w % MCU
    x = jnp.pad(img, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    x = x * PIXEL_MAX
    ycc = jnp.matmul(x, jnp.asarray(RGB_TO_YCBCR.T), precision=_HIGHEST) + YCBCR_SHIFT

    y = ycc[..., 0]
    hp, wp = y.shape[1:]
    # 4:2:0: average each 2x2 cell, summed in row-major order like avg_pool2d.
    c = ycc[..., 1:].reshape(b, hp // 2, 2, wp // 2, 2, 2)
    chroma = (((c[:, :, 0, :, 0] + c[:, :, 0, :, 1]) + c[:, :, 1, :, 0])
              + c[:, :, 1, :, 1]) / 4.0  # (B, H/2, W/2, 2)

    rounding = _diff_round if differentiable else _round_half_even
    scale = factor[:, None, None, None]
    luma_table = jnp.asarray(LUMA_TABLE.reshape(64)) * scale  # (B, 1, 1, 64)
    chroma_table = jnp.asarray(CHROMA_TABLE.reshape(64)) * scale
    y = _jpeg_plane(y, luma_table, rounding)
    cb = _jpeg_plane(chroma[..., 0], chroma_table, rounding)
    cr = _jpeg_plane(chroma[..., 1], chroma_table, rounding)

    # Chroma upsampling by 2x2 replication.
    chroma = jnp.stack([cb, cr], axis=-1)
    chroma = jnp.repeat(jnp.repeat(chroma, 2, axis=1), 2, axis=2)
    ycc = jnp.concatenate([y[..., None], chroma - LEVEL_SHIFT], axis=-1)
    rgb = jnp.matmul(ycc, jnp.asarray(YCBCR_TO_RGB.T), precision=_HIGHEST)
    rgb = _exact_div(jnp.clip(rgb, 0.0, PIXEL_MAX), jnp.float32(PIXEL_MAX))
    return rgb[:, :h, :w]


_compress = jax.jit(_compress_impl, static_argnames=("differentiable",))
