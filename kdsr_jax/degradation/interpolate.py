"""PyTorch ``F.interpolate`` resizing (area / bilinear / bicubic) as separable matrices.

KDSR-GAN's Real-ESRGAN degradation (reference DEGRADATION.md §2.2 steps 2, 6, 8) resizes
with ``torch.nn.functional.interpolate`` using its defaults: ``align_corners=False`` and
no antialiasing. This module reproduces those semantics (§2.4):

* ``area``: adaptive average pooling; output cell ``o`` of ``m`` averages the input indices
  ``[floor(o*n/m), ceil((o+1)*n/m))`` of ``n``.
* ``bilinear``: source coordinate ``src = (o + 0.5)*r - 0.5`` clamped below at 0, linear
  weights between ``floor(src)`` and ``min(floor(src)+1, n-1)``. When input and output
  sizes are equal torch copies the input unchanged (even for a scale factor != 1).
* ``bicubic``: the same ``src`` without the clamp, four taps ``floor(src)-1 .. +2`` with
  indices clamped to ``[0, n-1]``, cubic convolution with ``A = -0.75``.
* ``r = 1/scale_factor`` when a scale factor is given (output size ``floor(n*f)``), else
  ``r = n/m`` computed in float32, as torch does.

Every mode is linear and separable, so a resize is two small matrix products
``out = M_h @ img @ M_w^T`` (einsum over H then W). Matrix products are the fastest
primitive on CPU, GPU and TPU and need no gathers.

Shape-static variant (``resize_in_canvas``). Real-ESRGAN draws a random scale factor per
batch, so the image size changes from step to step; a jitted training step would
recompile for every new size. ``resize_in_canvas`` instead keeps the arrays at fixed
*canvas* shapes: the valid image is the top-left ``in_hw`` corner of a static input
canvas, the sizes ``in_hw`` / ``out_hw`` are traced int32 scalars, and the result is a
static output canvas whose top-left ``out_hw`` corner holds exactly what ``resize`` gives
for those sizes and whose remainder is zero. The interpolation matrices are built from the
traced sizes: taps are clamped to the traced valid input size (so nothing outside the
valid region is ever read with a non-zero weight), rows past the traced output size are
zero, and 'area' bins use integer arithmetic on the traced sizes. One compilation then
serves every size. Values outside the valid input region must be finite (they are
multiplied by zero weights).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# PyTorch's cubic-convolution coefficient (DEGRADATION.md §2.4, F.interpolate bicubic).
CUBIC_A = -0.75
# Modes supported (the three that Real-ESRGAN draws from, DEGRADATION.md §2.2 step 2).
MODES = ("area", "bilinear", "bicubic")

_HIGHEST = jax.lax.Precision.HIGHEST
# Keeps sign, exponent and the top 11 stored mantissa bits of a float32 (12 significant).
_HEAD_MASK = -(1 << 12)


def _check_image(img, fn: str) -> None:
    shape = getattr(img, "shape", None)
    dtype = getattr(img, "dtype", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"{fn}: expected an NHWC image batch of rank 4, got shape {shape}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{fn}: expected a floating-point image, got dtype {dtype}")


def _check_mode(mode: str, fn: str) -> None:
    if mode not in MODES:
        raise ValueError(f"{fn}: unknown mode {mode!r}; expected one of {MODES}")


def _pair(value, what: str, fn: str):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{fn}: {what} must be a scalar or a pair, got {value!r}")
        return tuple(value)
    return (value, value)


def _cubic_weights(t):
    """The four torch bicubic weights for the fractional offset ``t`` in [0, 1).

    The Keys polynomials (A = CUBIC_A) are evaluated in factored form,
    ``near(x) = (x - 1)((A + 2)x^2 - x - 1)`` for |x| <= 1 and
    ``far(x) = A(x - 1)(x - 2)^2`` for 1 < |x| < 2, which avoids the cancellation of the
    expanded cubic in float32 (torch's FMA-compiled kernel is as accurate; the expanded
    form in plain float32 is off by up to 6e-7).
    """
    a = CUBIC_A
    u = 1.0 - t
    w0 = a * t * u * u  # far(t + 1)
    w1 = (t - 1.0) * ((a + 2.0) * t * t - t - 1.0)  # near(t)
    w2 = (u - 1.0) * ((a + 2.0) * u * u - u - 1.0)  # near(1 - t)
    w3 = a * u * t * t  # far(2 - t)
    return w0, w1, w2, w3


def _source_index(ratio, o):
    """``ratio * (o + 0.5) - 0.5`` rounded once, as torch's FMA-compiled CPU kernel does.

    Plain float32 rounds the product and the difference separately, which moves the
    source coordinate by one ulp (up to 3e-5 at 400 px) for some rows. ``ratio`` is split
    by bit masking into a 12-bit head and a 12-bit tail; each times ``o + 0.5`` (< 2^12
    significant bits for o < 2048) is exact, the head minus 0.5 is exact, so the final
    addition is the only rounding. Every step is exact, hence also safe where the
    compiler contracts multiply-adds (GPU).
    """
    bits = jax.lax.bitcast_convert_type(ratio, jnp.int32)
    head = jax.lax.bitcast_convert_type(bits & jnp.int32(_HEAD_MASK), jnp.float32)
    tail = ratio - head
    dst = o.astype(jnp.float32) + jnp.float32(0.5)
    return (head * dst - jnp.float32(0.5)) + tail * dst


def _axis_matrix(n_in, n_out, in_max: int, out_max: int, mode: str, ratio):
    """Interpolation matrix (out_max, in_max) for one axis.

    ``n_in`` / ``n_out`` are python ints or traced int32 scalars (<= in_max / out_max);
    ``ratio`` is the float32 source step ``r`` (ignored for 'area'). Rows >= n_out are
    zero and no column >= n_in receives weight.
    """
    n_in = jnp.asarray(n_in, jnp.int32)
    n_out = jnp.asarray(n_out, jnp.int32)
    o = jnp.arange(out_max, dtype=jnp.int32)
    cols = jnp.arange(in_max, dtype=jnp.int32)[None, :]
    row_valid = (o < n_out)[:, None]

    if mode == "area":
        start = (o * n_in) // n_out  # floor(o*n/m)
        end = ((o + 1) * n_in + n_out - 1) // n_out  # ceil((o+1)*n/m)
        count = jnp.maximum(end - start, 1).astype(jnp.float32)
        inside = (cols >= start[:, None]) & (cols < end[:, None])
        w = jnp.where(inside, 1.0 / count[:, None], 0.0)
        return jnp.where(row_valid, w, 0.0).astype(jnp.float32)

    src = _source_index(jnp.asarray(ratio, jnp.float32), o)
    last = n_in - 1

    if mode == "bilinear":
        src = jnp.maximum(src, 0.0)
        i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), last)
        lam1 = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
        lam0 = 1.0 - lam1
        i1 = jnp.minimum(i0 + 1, last)
        w = (jnp.where(cols == i0[:, None], lam0[:, None], 0.0)
             + jnp.where(cols == i1[:, None], lam1[:, None], 0.0))
        # torch copies the input unchanged when the sizes are equal.
        identity = (cols == o[:, None]).astype(jnp.float32)
        w = jnp.where(n_in == n_out, identity, w)
    else:  # bicubic
        fl = jnp.floor(src)
        i0 = jnp.minimum(fl.astype(jnp.int32), last)
        t = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
        w = jnp.zeros((out_max, in_max), jnp.float32)
        for k, wk in enumerate(_cubic_weights(t)):
            idx = jnp.clip(i0 - 1 + k, 0, last)
            w = w + jnp.where(cols == idx[:, None], wk[:, None], 0.0)
    return jnp.where(row_valid, w, 0.0).astype(jnp.float32)


def _static_ratio(n_in: int, n_out: int, factor) -> np.float32:
    """torch's source step: float32(1/f) (1/f in double) or float32(n)/m."""
    if factor is not None:
        return np.float32(1.0 / float(factor))
    return np.float32(n_in) / np.float32(n_out)


def _traced_ratio(n_in, n_out, factor):
    if factor is None:
        return jnp.asarray(n_in, jnp.float32) / jnp.asarray(n_out, jnp.float32)
    if isinstance(factor, (int, float, np.floating, np.integer)):
        return jnp.float32(1.0 / float(factor))
    return jnp.float32(1.0) / jnp.asarray(factor, jnp.float32)


@functools.partial(jax.jit, static_argnames=("mode", "out_max_hw"))
def _resize_core(img, sizes, ratios, *, mode: str, out_max_hw: tuple[int, int]):
    """Shared kernel: img (B, H, W, C) -> (B, *out_max_hw, C).

    sizes: int32 (4,) = (in_h, in_w, out_h, out_w) valid sizes; ratios: float32 (2,)
    source steps (h, w). One compilation per (input shape, mode, output canvas).
    """
    _, h, w, _ = img.shape
    mh = _axis_matrix(sizes[0], sizes[2], h, out_max_hw[0], mode, ratios[0])  # (Ho, H)
    mw = _axis_matrix(sizes[1], sizes[3], w, out_max_hw[1], mode, ratios[1])  # (Wo, W)
    dtype = img.dtype
    x = img.astype(jnp.float32)
    x = jnp.einsum("pw,bhwc->bhpc", mw, x, precision=_HIGHEST)
    x = jnp.einsum("oh,bhpc->bopc", mh, x, precision=_HIGHEST)
    return x.astype(dtype)


def output_size(in_hw: Sequence[int], scale_factor) -> tuple[int, int]:
    """torch's output size for a scale factor: ``floor(n * f)`` per axis (double precision)."""
    fh, fw = _pair(scale_factor, "scale_factor", "output_size")
    return (int(math.floor(float(in_hw[0]) * float(fh))),
            int(math.floor(float(in_hw[1]) * float(fw))))


def resize(img, out_hw=None, mode: str = "bilinear", scale_factor=None):
    """Resize an NHWC batch like ``F.interpolate(x, size|scale_factor, mode)``.

    Args:
      img: (B, H, W, C) float array.
      out_hw: target (h, w) (python ints); give either this or ``scale_factor``.
      mode: 'area', 'bilinear' or 'bicubic'.
      scale_factor: python float or (fh, fw); output size ``floor(n*f)`` and source step
        ``1/f`` as torch does.
    Returns:
      (B, h, w, C) array of img's dtype (bicubic may overshoot [0, 1], like torch).
    """
    fn = "interpolate.resize"
    _check_image(img, fn)
    _check_mode(mode, fn)
    _, h, w, _ = img.shape
    if (out_hw is None) == (scale_factor is None):
        raise ValueError(f"{fn}: give exactly one of out_hw and scale_factor "
                         f"(got out_hw={out_hw!r}, scale_factor={scale_factor!r})")
    if scale_factor is not None:
        fh, fw = _pair(scale_factor, "scale_factor", fn)
        if float(fh) <= 0 or float(fw) <= 0:
            raise ValueError(f"{fn}: scale_factor must be positive, got {scale_factor!r}")
        out_h, out_w = output_size((h, w), (fh, fw))
    else:
        fh = fw = None
        out_h, out_w = (int(v) for v in _pair(out_hw, "out_hw", fn))
    if out_h < 1 or out_w < 1:
        raise ValueError(f"{fn}: output size must be >= 1, got ({out_h}, {out_w}) "
                         f"from input (H, W) = ({h}, {w})")
    sizes = np.array([h, w, out_h, out_w], np.int32)
    ratios = np.array([_static_ratio(h, out_h, fh), _static_ratio(w, out_w, fw)], np.float32)
    return _resize_core(img, sizes, ratios, mode=mode, out_max_hw=(out_h, out_w))


def resize_in_canvas(img, in_hw, out_hw, canvas_hw: Sequence[int], mode: str = "bilinear",
                     scale_factor=None):
    """Shape-static resize of the top-left ``in_hw`` region of a canvas (see module doc).

    Args:
      img: (B, Hc, Wc, C) input canvas; the valid image is ``img[:, :in_h, :in_w]``.
      in_hw: (in_h, in_w) valid input size; python ints or traced int32 scalars.
      out_hw: (out_h, out_w) target size (traced or static), or None with ``scale_factor``
        to use ``floor(in * f)`` (computed in float32 when f is traced).
      canvas_hw: static (Ho, Wo) shape of the output canvas; must hold ``out_hw``
        (larger sizes are not checked under jit; they are cut to the canvas).
      mode: 'area', 'bilinear' or 'bicubic'.
      scale_factor: None, a scalar or an (fh, fw) pair (python or traced); when given the
        source step is ``1/f`` as in torch.
    Returns:
      (B, Ho, Wo, C): ``resize(valid, out_hw, mode, scale_factor)`` in the top-left
      ``out_hw`` corner, zeros elsewhere.
    """
    fn = "interpolate.resize_in_canvas"
    _check_image(img, fn)
    _check_mode(mode, fn)
    _, hc, wc, _ = img.shape
    canvas_h, canvas_w = (int(v) for v in _pair(canvas_hw, "canvas_hw", fn))
    in_h, in_w = _pair(in_hw, "in_hw", fn)
    if scale_factor is not None:
        fh, fw = _pair(scale_factor, "scale_factor", fn)
    else:
        fh = fw = None
    if out_hw is None:
        if scale_factor is None:
            raise ValueError(f"{fn}: give out_hw, scale_factor or both")
        out_h = jnp.floor(jnp.asarray(in_h, jnp.float32) * jnp.asarray(fh, jnp.float32))
        out_w = jnp.floor(jnp.asarray(in_w, jnp.float32) * jnp.asarray(fw, jnp.float32))
        out_h, out_w = out_h.astype(jnp.int32), out_w.astype(jnp.int32)
    else:
        out_h, out_w = _pair(out_hw, "out_hw", fn)
    for name, v, limit in (("in_h", in_h, hc), ("in_w", in_w, wc),
                           ("out_h", out_h, canvas_h), ("out_w", out_w, canvas_w)):
        if isinstance(v, (int, np.integer)) and not 1 <= int(v) <= limit:
            raise ValueError(f"{fn}: {name}={int(v)} outside [1, {limit}] for input canvas "
                             f"{tuple(img.shape)} and output canvas {(canvas_h, canvas_w)}")
    in_h, in_w = jnp.asarray(in_h, jnp.int32), jnp.asarray(in_w, jnp.int32)
    out_h, out_w = jnp.asarray(out_h, jnp.int32), jnp.asarray(out_w, jnp.int32)
    sizes = jnp.stack([in_h, in_w, out_h, out_w])
    ratios = jnp.stack([_traced_ratio(in_h, out_h, fh), _traced_ratio(in_w, out_w, fw)])
    return _resize_core(img, sizes, ratios, mode=mode, out_max_hw=(canvas_h, canvas_w))
