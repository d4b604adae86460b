"""Small shared building blocks of the KDSR networks (official `common.py`, and
`discriminator_arch.py` for the bilinear upsampling).

* PyTorch-ordered pixel shuffle / unshuffle on NHWC arrays (torch `nn.PixelShuffle`). JAX's
  `depth_to_space` uses a different channel order and is deliberately not used.
* The MeanShift constants (`common.py` `MeanShift`): fixed arrays, never parameters.
* A 3x3 (or kxk) convolution with PyTorch's default initialisation: a plain `nn.Conv`
  (backend-specific speed paths live in `kdsr_jax.inference`, not here).
* The exact `F.interpolate(scale_factor=2, mode='bilinear', align_corners=False)`
  upsampling used by the U-Net discriminator.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# DIV2K RGB mean used by MeanShift (official `rgb_mean`); std is (1, 1, 1).
RGB_MEAN = (0.4488, 0.4371, 0.4040)
RGB_STD = (1.0, 1.0, 1.0)
# Negative slope of every LeakyReLU in G and E (official `nn.LeakyReLU(0.1, True)`).
LRELU_SLOPE = 0.1


def mean_shift_bias(rgb_range: float, sign: int) -> np.ndarray:
    """The (3,) bias of MeanShift(sign) exactly as the official code computes it in
    float32: sign * rgb_range * mean / std."""
    mean = np.asarray(RGB_MEAN, np.float32)
    std = np.asarray(RGB_STD, np.float32)
    return (np.float32(sign) * np.float32(rgb_range) * mean / std).astype(np.float32)


def mean_shift_weight() -> np.ndarray:
    """The (3, 3, 1, 1) OIHW MeanShift weight: identity / std."""
    std = np.asarray(RGB_STD, np.float32)
    return (np.eye(3, dtype=np.float32) / std[:, None]).reshape(3, 3, 1, 1)


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
    """(B, H, W, C*r*r) -> (B, H*r, W*r, C), PyTorch channel order:
    out[b, h*r+i, w*r+j, c] = in[b, h, w, c*r*r + i*r + j]."""
    b, h, w, crr = x.shape
    c = crr // (r * r)
    x = x.reshape(b, h, w, c, r, r)
    x = x.transpose(0, 1, 4, 2, 5, 3)  # (B, H, i, W, j, C)
    return x.reshape(b, h * r, w * r, c)


def pixel_unshuffle(x: jax.Array, r: int) -> jax.Array:
    """(B, H*r, W*r, C) -> (B, H, W, C*r*r), exact inverse of `pixel_shuffle`:
    out[b, y, x, c*r*r + i*r + j] = in[b, y*r+i, x*r+j, c]."""
    b, hr, wr, c = x.shape
    if hr % r or wr % r:
        raise ValueError(f"pixel_unshuffle: spatial size {(hr, wr)} not divisible by {r}")
    h, w = hr // r, wr // r
    x = x.reshape(b, h, r, w, r, c)
    x = x.transpose(0, 1, 3, 5, 2, 4)  # (B, H, W, C, i, j)
    return x.reshape(b, h, w, c * r * r)


def torch_uniform_init(fan_in: int):
    """PyTorch's default Conv/Linear init: kaiming_uniform(a=sqrt(5)) for weights and
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for biases are both U(-b, b), b = 1/sqrt(fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(features: int, in_features: int, kernel: int = 3, stride: int = 1,
         padding: int | None = None, use_bias: bool = True, dtype=jnp.float32,
         name: str | None = None) -> nn.Conv:
    """`default_conv` of the official `common.py`: zero padding k//2, stride 1, bias,
    PyTorch's default init."""
    pad = kernel // 2 if padding is None else padding
    fan_in = in_features * kernel * kernel
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=use_bias, dtype=dtype,
                   param_dtype=jnp.float32, kernel_init=torch_uniform_init(fan_in),
                   bias_init=torch_uniform_init(fan_in), name=name)


def dense(features: int, in_features: int, use_bias: bool = True, dtype=jnp.float32,
          name: str | None = None) -> nn.Dense:
    """nn.Linear with PyTorch's default init."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=torch_uniform_init(in_features),
                    bias_init=torch_uniform_init(in_features), name=name)


def lrelu(x: jax.Array, slope: float = LRELU_SLOPE) -> jax.Array:
    """LeakyReLU, negative slope 0.1 by default."""
    return nn.leaky_relu(x, negative_slope=slope)


def upsample2x_bilinear(x: jax.Array) -> jax.Array:
    """x2 bilinear upsampling of (B, H, W, C), identical to torch
    `F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)`.

    Torch maps output index o to source s = (o + 0.5) / 2 - 0.5, clamped below at 0,
    and interpolates between floor(s) and min(floor(s) + 1, n - 1). For a factor of 2
    this is, per axis: out[2k] = 0.25 x[k-1] + 0.75 x[k] (out[0] = x[0]) and
    out[2k+1] = 0.75 x[k] + 0.25 x[k+1] (the last one = x[n-1]); the clamped border
    first output is copied (torch weights 1 and 0); the last one is 0.75 x + 0.25 x, as
    torch computes it with a clamped neighbour. Like torch's kernel, W is interpolated
    inside, H outside.
    """
    return _up2_axis(_up2_axis(x, 2), 1)


def _up2_axis(x: jax.Array, axis: int) -> jax.Array:
    n = x.shape[axis]
    take = lambda a, b: jax.lax.slice_in_dim(x, a, b, axis=axis)  # noqa: E731
    # Torch computes (1 - l) * x[i0] + l * x[i1] with l the fractional part.
    if n == 1:
        even, odd = x, 0.75 * x + 0.25 * x
    else:
        even_inner = 0.25 * take(0, n - 1) + 0.75 * take(1, n)       # out[2k], k >= 1
        even = jnp.concatenate([take(0, 1), even_inner], axis=axis)
        odd_inner = 0.75 * take(0, n - 1) + 0.25 * take(1, n)        # out[2k+1], k < n-1
        last = take(n - 1, n)
        odd = jnp.concatenate([odd_inner, 0.75 * last + 0.25 * last], axis=axis)
    out = jnp.stack([even, odd], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = 2 * n
    return out.reshape(shape)
