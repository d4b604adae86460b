"""A drop-in `lax.conv_general_dilated` that keeps both CPU cores busy on small images
(used only by `kdsr_jax.inference`, never inside the model definitions).

Why: KDSR's cost is dominated by 3x3, C->C convolutions at LR resolution (53 of them in
the KDSRs-M generator, 18 more in its KD-IDE). On the CPU, XLA hands these to a
convolution kernel that only splits its work across threads along the image *width*,
and only once the width is large, so a narrow image (e.g. 64 px) runs on one core, and
batching does not help either (`benchmarks/README.md` has the measurements).

What: for a stride-1 "same" convolution on a narrow NHWC image, cut every image into
`k` horizontal strips (each with the `kh // 2` halo rows it needs from its neighbours,
zeros at the true image border) and lay all `B * k` strips side by side along the width,
separated by `kw // 2` zero columns. One convolution, 'valid' along the height, over
this wide image computes exactly the same sums for every output pixel (the zero gaps
play the part of the zero padding), and the output is cut back into place. The
re-arrangement is a handful of pads, reshapes and transposes (cheap next to the conv)
and is linear, so gradients flow through it unchanged.

It is only used where it pays: CPU backend, NHWC/HWIO, stride 1, no dilation, no
feature groups, odd kernel with 'same' zero padding, and an image narrower than
`NARROW_WIDTH`. Everything else (GPU/TPU, the strided discriminator convs, wide images)
goes straight to `lax.conv_general_dilated`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

# Images at least this wide are already split across threads by XLA's CPU convolution.
NARROW_WIDTH = 128
# Width the packed image should reach so that XLA parallelises it (measured on 2 cores).
TARGET_WIDTH = 256
# Fewer rows per strip than this wastes too much work on halo rows.
MIN_STRIP_ROWS = 8

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_same_padding(padding, kh: int, kw: int) -> bool:
    if isinstance(padding, str):
        return padding.upper() == "SAME"
    try:
        return tuple(map(tuple, padding)) == ((kh // 2, kh // 2), (kw // 2, kw // 2))
    except TypeError:
        return False


def _dims_are_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.conv_dimension_numbers(
            (1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
    return tuple(dimension_numbers) == _NHWC


def strips_for(batch: int, height: int, width: int, kw: int) -> int:
    """How many strips to cut each image into (1 = only lay the batch side by side)."""
    per_strip_width = width + kw // 2
    k = max(1, math.ceil(TARGET_WIDTH / (batch * per_strip_width)))
    return max(1, min(k, height // MIN_STRIP_ROWS))


def eligible(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
             dimension_numbers, feature_group_count, batch_group_count) -> bool:
    """Whether `packed_conv` applies (and is expected to be faster) for this call."""
    if jax.default_backend() != "cpu":
        return False
    if lhs.ndim != 4 or rhs.ndim != 4 or not _dims_are_nhwc(dimension_numbers):
        return False
    kh, kw = rhs.shape[:2]
    if kh % 2 == 0 or kw % 2 == 0 or tuple(window_strides) != (1, 1):
        return False
    if any(d not in (None, (1, 1), [1, 1]) for d in (lhs_dilation, rhs_dilation)):
        return False
    if feature_group_count != 1 or batch_group_count != 1:
        return False
    if not _is_same_padding(padding, kh, kw):
        return False
    b, h, w, _ = lhs.shape
    if w >= NARROW_WIDTH or min(b, h, w) < 1:      # wide, or empty (nothing to pack)
        return False
    return b * (w + kw // 2) < TARGET_WIDTH or strips_for(b, h, w, kw) > 1


def packed_conv(lhs, rhs, *, precision=None, preferred_element_type=None):
    """Stride-1 'same' NHWC x HWIO convolution computed on a strip-packed wide image;
    equal to `lax.conv_general_dilated(lhs, rhs, (1, 1), 'SAME', ...)`."""
    b, h, w, c = lhs.shape
    kh, kw = rhs.shape[:2]
    ph, pw = kh // 2, kw // 2
    k = strips_for(b, h, w, kw)
    rows = -(-h // k)                                     # rows per strip
    # Zero halo above, zero halo + filler below: (B, k*rows + 2ph, W, C).
    x = jnp.pad(lhs, ((0, 0), (ph, ph + k * rows - h), (0, 0), (0, 0)))
    if k == 1:
        strips = x[:, None]
    else:
        strips = jnp.stack([x[:, i * rows:i * rows + rows + 2 * ph] for i in range(k)], 1)
    # (B, k, rows+2ph, W, C) -> gap columns -> (1, rows+2ph, B*k*(W+pw), C)
    strips = jnp.pad(strips, ((0, 0), (0, 0), (0, 0), (0, pw), (0, 0)))
    wide = strips.transpose(2, 0, 1, 3, 4).reshape(1, rows + 2 * ph, b * k * (w + pw), c)
    y = lax.conv_general_dilated(wide, rhs, (1, 1), ((0, 0), (pw, pw)),
                                 dimension_numbers=_NHWC, precision=precision,
                                 preferred_element_type=preferred_element_type)
    cout = y.shape[-1]
    y = y.reshape(rows, b, k, w + pw, cout)[:, :, :, :w]  # drop the gap columns
    y = y.transpose(1, 2, 0, 3, 4).reshape(b, k * rows, w, cout)
    return y[:, :h]


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """Same signature and result as `lax.conv_general_dilated`; uses `packed_conv` where
    it is eligible (see the module docstring), `lax.conv_general_dilated` otherwise."""
    if eligible(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                dimension_numbers, feature_group_count, batch_group_count):
        return packed_conv(lhs, rhs, precision=precision,
                           preferred_element_type=preferred_element_type)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
