"""Per-sample depthwise 3x3 dynamic convolution: the core of IDR-DDC (paper Sec. 3;
official `IDR_DDC`, which runs it as a grouped conv).

`out[b, y, x, c] = sum_{ky, kx} kernels[b, ky, kx, c] * x_pad[b, y+ky, x+kx, c]`, with
`x_pad` = x zero-padded by 1: a cross-correlation (no kernel flip), no bias. The official
code runs it as a grouped conv (groups = B*C) over a (1, B*C, H, W) view.

Formulations (same function, different speed):

* ``'shift'``: zero-pad once, then 9 shifted multiply-adds. Pure elementwise work that
  XLA fuses into a single loop, reading the input once and writing the output once.
* ``'grouped'``: fold the batch into channels, (1, H, W, B*C), and call
  `lax.conv_general_dilated` with `feature_group_count = B*C` (what torch does).
* ``'auto'``: 'shift' on every backend: the op is memory-bound (9 MACs per element
  read) and XLA fuses 'shift' into one loop that reads x once and writes once, while
  'grouped' needs a batch->channel transpose on both sides and lands on the grouped-conv
  path with B*C groups, whose kernel gradient is a poorly tuned case. CPU timings of
  both are in `benchmarks/README.md`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLS = ("auto", "shift", "grouped")
KERNEL_SIZE = 3  # fixed in the official IDR_DDC


def resolve_impl(impl: str) -> str:
    """The concrete formulation used for `impl` on the current default backend."""
    if impl not in IMPLS:
        raise ValueError(f"dynconv impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "shift"
    return impl


def kernels_from_torch_order(v: jax.Array) -> jax.Array:
    """IDR-DDC's linear output (B, 9C), torch order 9c + 3ky + kx (the official
    `.view(B*C, 1, 3, 3)`), as kernels (B, 3, 3, C)."""
    c = v.shape[-1] // (KERNEL_SIZE * KERNEL_SIZE)
    return v.reshape(v.shape[0], c, KERNEL_SIZE, KERNEL_SIZE).transpose(0, 2, 3, 1)


def dynamic_depthwise_conv(x: jax.Array, kernels: jax.Array, impl: str = "auto") -> jax.Array:
    """x (B, H, W, C), kernels (B, 3, 3, C) -> (B, H, W, C); zero padding 1,
    cross-correlation, one 3x3 kernel per sample and channel."""
    if x.ndim != 4 or kernels.ndim != 4 or kernels.shape[1:3] != (KERNEL_SIZE, KERNEL_SIZE):
        raise ValueError(f"expected x (B,H,W,C) and kernels (B,3,3,C), got {x.shape}, "
                         f"{kernels.shape}")
    if kernels.shape[0] != x.shape[0] or kernels.shape[3] != x.shape[3]:
        raise ValueError(f"batch/channels of kernels {kernels.shape} do not match x {x.shape}")
    kernels = kernels.astype(x.dtype)
    impl = resolve_impl(impl)
    if impl == "shift":
        return _shift(x, kernels)
    return _grouped(x, kernels)


def _shift(x: jax.Array, kernels: jax.Array) -> jax.Array:
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = None
    for ky in range(KERNEL_SIZE):
        for kx in range(KERNEL_SIZE):
            term = xp[:, ky:ky + h, kx:kx + w, :] * kernels[:, ky, kx, :][:, None, None, :]
            out = term if out is None else out + term
    return out


def _grouped(x: jax.Array, kernels: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    lhs = x.transpose(1, 2, 0, 3).reshape(1, h, w, b * c)            # (1, H, W, B*C)
    rhs = kernels.transpose(1, 2, 0, 3).reshape(KERNEL_SIZE, KERNEL_SIZE, 1, b * c)  # HWIO
    out = jax.lax.conv_general_dilated(
        lhs, rhs, window_strides=(1, 1), padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=b * c)
    return out.reshape(h, w, b, c).transpose(2, 0, 1, 3)
