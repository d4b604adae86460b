"""Reflect-padded depthwise 2-D filtering: the blur of both degradation pipelines.

Implements BasicSR `filter2D` (DEGRADATION.md §2.4) and the classic `BatchBlur`
(§1.4), which have the same semantics: reflect padding by k//2 on every side (mirror
*without* repeating the edge pixel, NumPy `mode='reflect'`), then a 'valid' per-channel
**cross-correlation** (no kernel flip), the same kernel for every channel of an image.
A kernel of shape (k, k) or (1, k, k) is shared by the whole batch; (B, k, k) gives every
image its own kernel. Output size = input size.

Implementation. Both paths use `Precision.HIGHEST` so GPUs never drop to TF32/bf16.
* Row split (default): one conv with a 1 x k kernel and k output planes (plane r =
  correlation of every padded row with kernel row r), then plane r shifted by r rows and
  summed. Same 441 MACs per pixel as a k x k conv, but XLA runs a conv with k outputs
  much better than a one-channel 21x21 conv. Shared kernels fold batch and channels into
  the conv batch; per-image kernels fold them into a grouped conv's features.
* Direct k x k conv when the row planes would exceed `ROWS_MAX_BYTES` (k times the
  padded image; e.g. USM's 51x51 kernel on large batches).
Measured on this project's 2-core CPU, jitted, batch 16 of 256x256x3, 21x21 kernels,
while ~8 other jobs shared the cores (min of 3): shared kernel 0.82 s (direct conv
2.2 s; on a quieter machine the direct conv took 0.42 s, a C-group NHWC depthwise conv
0.67 s, 441 shifted multiply-adds 1.1 s); per-image kernels 2.7 s (direct grouped conv
3.4 s; `vmap` of the shared conv lowers to the same grouped conv, XLA's
`batch_group_count` was far slower).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_DIMS = ("NHWC", "HWIO", "NHWC")
# Largest intermediate (bytes) of the row-split path; bigger jobs use the direct conv.
ROWS_MAX_BYTES = 1 << 29


def check_image_batch(x, what: str) -> None:
    """Raises a one-line ValueError (prefixed with `what`) unless `x` is a float image
    batch (B, H, W, C). Shapes only, so it costs nothing at trace time."""
    if x.ndim != 4:
        raise ValueError(f"{what}: expected an image batch (B, H, W, C), got shape "
                         f"{tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{what}: expected a float image, got dtype {x.dtype} for shape "
                         f"{tuple(x.shape)}")


def _check(img, kernels) -> tuple[int, int]:
    """Validates shapes at trace time; returns (kernel batch, kernel size)."""
    check_image_batch(img, "filter2d")
    if kernels.ndim not in (2, 3) or kernels.shape[-1] != kernels.shape[-2]:
        raise ValueError(f"filter2d: kernels must be (k, k), (1, k, k) or (B, k, k), got "
                         f"shape {tuple(kernels.shape)}")
    k = kernels.shape[-1]
    if k % 2 != 1:
        raise ValueError(f"filter2d: kernel size must be odd, got shape "
                         f"{tuple(kernels.shape)}")
    nk = 1 if kernels.ndim == 2 else kernels.shape[0]
    b, h, w, _ = img.shape
    if nk not in (1, b):
        raise ValueError(f"filter2d: {nk} kernels for a batch of {b} images (shapes "
                         f"{tuple(kernels.shape)} and {tuple(img.shape)}); need 1 or {b}")
    if min(h, w) <= k // 2:
        raise ValueError(f"filter2d: image {h}x{w} (shape {tuple(img.shape)}) is too small "
                         f"for a {k}x{k} kernel: reflect padding needs H and W > {k // 2}")
    return nk, k


def reflect_pad(img: jax.Array, pad: int) -> jax.Array:
    """Mirror padding without edge repetition on H and W of (B, H, W, C)."""
    return jnp.pad(img, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def filter2d(img: jax.Array, kernels: jax.Array) -> jax.Array:
    """BasicSR `filter2D` / classic `BatchBlur` on NHWC: (B, H, W, C) -> (B, H, W, C).

    kernels: (k, k) or (1, k, k) shared by the batch, or (B, k, k) one per image
    (k odd). Reflect padding k//2, depthwise cross-correlation, float32 output.
    """
    kernels = jnp.asarray(kernels)
    nk, k = _check(img, kernels)
    b, h, w, c = img.shape
    x = reflect_pad(img.astype(jnp.float32), k // 2)                 # (B, Hp, Wp, C)
    kernels = kernels.astype(jnp.float32).reshape(nk, k, k)
    hp = h + k - 1
    hi = jax.lax.Precision.HIGHEST
    if b * c * hp * w * k * 4 > ROWS_MAX_BYTES:
        return _filter2d_direct(x, kernels, (b, h, w, c))
    if nk == 1:
        x = jnp.moveaxis(x, 3, 1).reshape(b * c, hp, w + k - 1, 1)   # (B*C, Hp, Wp, 1)
        rhs = kernels[0].T[None, :, None, :]                         # (1, k, 1, k rows)
        y = jax.lax.conv_general_dilated(x, rhs, (1, 1), "VALID", dimension_numbers=_DIMS,
                                         precision=hi)               # (B*C, Hp, W, k)
        y = _sum_shifted_rows(y, h)                                  # (B*C, H, W)
        return jnp.moveaxis(y.reshape(b, c, h, w), 1, 3)
    x = jnp.moveaxis(x, 0, 2).reshape(1, hp, w + k - 1, b * c)        # (1, Hp, Wp, B*C)
    rhs = jnp.repeat(kernels, c, axis=0)                             # (B*C, k, k)
    rhs = jnp.transpose(rhs, (2, 0, 1)).reshape(1, k, 1, b * c * k)  # group g: rows of K_g
    y = jax.lax.conv_general_dilated(x, rhs, (1, 1), "VALID", dimension_numbers=_DIMS,
                                     feature_group_count=b * c,
                                     precision=hi)                   # (1, Hp, W, B*C*k)
    y = _sum_shifted_rows(jnp.moveaxis(y[0].reshape(hp, w, b * c, k), 2, 0), h)
    return jnp.moveaxis(y.reshape(b, c, h, w), 1, 3)


def _filter2d_direct(x: jax.Array, kernels: jax.Array, shape) -> jax.Array:
    """Padded x (B, Hp, Wp, C), kernels (nk, k, k): one k x k depthwise conv."""
    b, h, w, c = shape
    nk, k, _ = kernels.shape
    hp, wp = h + k - 1, w + k - 1
    hi = jax.lax.Precision.HIGHEST
    if nk == 1:
        x = jnp.moveaxis(x, 3, 1).reshape(b * c, hp, wp, 1)          # (B*C, Hp, Wp, 1)
        y = jax.lax.conv_general_dilated(x, kernels[0][:, :, None, None], (1, 1), "VALID",
                                         dimension_numbers=_DIMS, precision=hi)
        return jnp.moveaxis(y.reshape(b, c, h, w), 1, 3)
    x = jnp.moveaxis(x, 0, 2).reshape(1, hp, wp, b * c)               # (1, Hp, Wp, B*C)
    rhs = jnp.moveaxis(jnp.repeat(kernels, c, axis=0), 0, 2)[:, :, None, :]
    y = jax.lax.conv_general_dilated(x, rhs, (1, 1), "VALID", dimension_numbers=_DIMS,
                                     feature_group_count=b * c, precision=hi)
    return jnp.moveaxis(y.reshape(h, w, b, c), 2, 0)


def _sum_shifted_rows(y: jax.Array, h: int) -> jax.Array:
    """(N, H + k - 1, W, k) row-filtered planes -> (N, H, W): sum_r plane r shifted by r."""
    out = y[:, 0:h, :, 0]
    for r in range(1, y.shape[-1]):
        out = out + y[:, r:r + h, :, r]
    return out
