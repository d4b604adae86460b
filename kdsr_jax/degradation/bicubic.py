"""MATLAB-`imresize`-like antialiased bicubic resize of the classic KDSR pipeline.

DEGRADATION.md §1.5: the official `utils/util2.py` class `bicubic` resamples with the
Keys cubic (a = -0.5), stretched by 1/s for downscaling (antialiasing), weights
normalised per output pixel in float32, border indices *clamped* (edge replication,
unlike MATLAB's mirroring), separable: along H first, then along W. Output length is
`int(n * scale)`. Its tap selection has a quirk we reproduce: tap columns whose weight
is exactly 0 for the *first* output pixel are dropped for every output pixel (x4 down
keeps 16 of 18 taps).

Weights and indices are computed with NumPy at trace time (shapes are static), emulating
the official float32 arithmetic (`contributions`), then folded into a small dense
`(out, in)` matrix per axis (`resize_matrix`); the resize itself is two matmuls
(`resize`), which XLA runs well on CPU and GPU. Repeated clamped indices at the border
are summed into one matrix entry, which only changes float32 rounding.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from kdsr_jax.degradation.filters import check_image_batch

# §1.5: Keys cubic convolution coefficient (MATLAB's choice).
CUBIC_A = -0.5
# §1.5: support of the (unstretched) cubic kernel, in input samples.
KERNEL_WIDTH = 4

_F32 = np.float32


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic with a = -0.5, float32, same operation order as the official code."""
    absx = np.abs(x)
    absx2 = absx * absx
    absx3 = absx * absx * absx
    inner = (absx <= 1).astype(_F32)
    outer = ((absx > 1) & (absx <= 2)).astype(_F32)
    # Coefficients of the a = -0.5 cubic: (a+2)|t|^3 - (a+3)|t|^2 + 1 and
    # a|t|^3 - 5a|t|^2 + 8a|t| - 4a.
    a = CUBIC_A
    near = _F32(a + 2) * absx3 - _F32(a + 3) * absx2 + _F32(1)
    far = _F32(a) * absx3 - _F32(5 * a) * absx2 + _F32(8 * a) * absx - _F32(4 * a)
    return near * inner + far * outer


def output_size(in_size: int, scale: float) -> int:
    """Official output length `int(in_size * scale)` (Python float arithmetic)."""
    return int(in_size * scale)


def contributions(in_size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Official `bicubic.contribute` for one axis: `(weights, indices)`, (out, taps).

    `scale` < 1 downscales (e.g. 1/4), > 1 upscales (e.g. 4). Indices are 0-based and
    already clamped to [0, in_size - 1]. Emulates the official float32 arithmetic:
    tensor ops in float32 with Python-double scalars rounded to float32.
    """
    if in_size < 1 or scale <= 0:
        raise ValueError(f"bicubic: need in_size >= 1 and scale > 0, got {in_size}, {scale}")
    out_size = output_size(in_size, scale)
    if out_size < 1:
        raise ValueError(f"bicubic: input length {in_size} at scale {scale} gives an "
                         f"empty output")
    width = KERNEL_WIDTH / scale if scale < 1 else KERNEL_WIDTH
    x = np.arange(1, out_size + 1, dtype=_F32)
    u = x / _F32(scale) + _F32(0.5 * (1 - 1 / scale))                # centre, 1-based
    left = np.floor(u - _F32(width / 2))
    taps = int(np.ceil(width) + 2)
    idx = left[:, None] + np.arange(taps, dtype=_F32)[None, :]        # (out, taps)
    dist = u[:, None] - idx
    if scale < 1:
        w = _F32(scale) * _cubic(dist * _F32(scale))
    else:
        w = _cubic(dist)
    w = w / np.sum(w, axis=1, keepdims=True, dtype=_F32)
    idx = np.minimum(np.maximum(_F32(1), idx), _F32(in_size))
    keep = w[0] != 0
    return w[:, keep].astype(_F32), idx[:, keep].astype(np.int64) - 1


@functools.lru_cache(maxsize=64)
def _matrix_cached(in_size: int, scale: float) -> np.ndarray:
    w, idx = contributions(in_size, scale)
    mat = np.zeros((w.shape[0], in_size), _F32)
    rows = np.broadcast_to(np.arange(w.shape[0])[:, None], idx.shape)
    np.add.at(mat, (rows, idx), w)
    mat.setflags(write=False)
    return mat


def resize_matrix(in_size: int, scale: float) -> np.ndarray:
    """Dense (out, in) float32 matrix of the official 1-D resize (read-only, cached)."""
    return _matrix_cached(int(in_size), float(scale))


def resize(x: jax.Array, scale: float) -> jax.Array:
    """Official MATLAB-like bicubic resize of a batch (B, H, W, C) by `scale`.

    `scale` is the official float factor: `1 / s` to downscale by s, `s` to upscale.
    Returns (B, int(H*scale), int(W*scale), C) float32. No clamping of the output.
    """
    check_image_batch(x, "bicubic.resize")
    _, h, w, _ = x.shape
    mh = jnp.asarray(resize_matrix(h, scale))                        # (H', H)
    mw = jnp.asarray(resize_matrix(w, scale))                        # (W', W)
    hi = jax.lax.Precision.HIGHEST
    x = x.astype(jnp.float32)
    x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=hi)             # along H first
    return jnp.einsum("pw,bowc->bopc", mw, x, precision=hi)          # then along W


def downscale(x: jax.Array, factor: int) -> jax.Array:
    """Downscale by an integer factor s (official call `scale=1/s`)."""
    _check_factor(factor)
    return resize(x, 1 / factor)


def upscale(x: jax.Array, factor: int) -> jax.Array:
    """Upscale by an integer factor s (official call `scale=s`, util2's second output)."""
    _check_factor(factor)
    return resize(x, factor)


def _check_factor(factor):
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"bicubic: the factor must be a positive integer, got {factor!r}")


# Used by the docstring claim "x4 down keeps 16 of 18 taps"; handy in tests.
def num_taps(scale: float) -> int:
    """Number of candidate taps before the zero-weight drop: ceil(width) + 2."""
    width = KERNEL_WIDTH / scale if scale < 1 else KERNEL_WIDTH
    return int(math.ceil(width) + 2)
