"""U-Net discriminator with spectral normalisation (Real-ESRGAN's `UNetDiscriminatorSN`,
used in the KDSR-GAN stage; official `KDSR-GAN/kdsrgan/archs/discriminator_arch.py`).

Spectral norm is our own implementation, numerically equal to
`torch.nn.utils.spectral_norm` (dim 0, one power iteration, eps 1e-12):

* the weight matrix is the torch OIHW kernel reshaped to (out, in*kh*kw);
* the 'spectral' collection holds, per SN conv, `u` (out,) and `v` (in*kh*kw,), in the
  same orientation as torch's `weight_u` / `weight_v` (so conversion is a plain copy);
* `train=True` first does `v <- normalize(W^T u)`, `u <- normalize(W v)` and stores them
  (when 'spectral' is mutable); eval uses the stored vectors unchanged;
* `sigma = u . (W v)` with u, v treated as constants (no gradient through them), and the
  conv uses `W / sigma`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdsr_jax.models.layers import conv, torch_uniform_init, upsample2x_bilinear
from kdsr_jax.models.spec import ModelSpec

Dtype = Any
SN_EPS = 1e-12        # torch spectral_norm default eps
D_LRELU_SLOPE = 0.2   # LeakyReLU slope of `discriminator_arch.py`


def _normalize(x):
    # torch.nn.functional.normalize: x / max(||x||_2, eps)
    return x / jnp.maximum(jnp.linalg.norm(x), SN_EPS)


def kernel_to_matrix(kernel: jax.Array) -> jax.Array:
    """Flax HWIO kernel -> torch's (out, in*kh*kw) spectral-norm matrix."""
    kh, kw, cin, cout = kernel.shape
    return kernel.transpose(3, 2, 0, 1).reshape(cout, cin * kh * kw)


class SNConv(nn.Module):
    """Bias-free conv with spectral-normalised weight (see module docstring)."""

    features: int
    in_features: int
    kernel: int
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        k, cin, cout = self.kernel, self.in_features, self.features
        w = self.param("kernel", torch_uniform_init(cin * k * k), (k, k, cin, cout), jnp.float32)

        def init_vec(n):
            return lambda: _normalize(jax.random.normal(self.make_rng("params"), (n,), jnp.float32))

        u_var = self.variable("spectral", "u", init_vec(cout))
        v_var = self.variable("spectral", "v", init_vec(cin * k * k))
        mat = kernel_to_matrix(w)
        u, v = u_var.value, v_var.value
        if train:
            mat_ng = jax.lax.stop_gradient(mat)
            v = _normalize(mat_ng.T @ u)
            u = _normalize(mat_ng @ v)
            if self.is_mutable_collection("spectral") and not self.is_initializing():
                u_var.value, v_var.value = u, v
        u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
        sigma = jnp.dot(u, mat @ v)
        w_eff = (w / sigma).astype(self.dtype)
        p = k // 2 if self.stride == 1 else 1
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype), w_eff, window_strides=(self.stride, self.stride),
            padding=((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


class UNetDiscriminatorSN(nn.Module):
    """Per-pixel real/fake logits (B, H, W, 1); H and W must be divisible by 8."""

    spec: ModelSpec
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        nf, skip = self.spec.d_num_feat, self.spec.d_skip_connection
        if x.shape[1] % 8 or x.shape[2] % 8:
            raise ValueError(f"discriminator input H, W must be divisible by 8, got {x.shape}")
        act = lambda t: nn.leaky_relu(t, D_LRELU_SLOPE)  # noqa: E731
        sn = lambda o, i, k, s, name: SNConv(o, i, k, s, self.dtype, name=name)  # noqa: E731
        x = x.astype(self.dtype)
        x0 = act(conv(nf, 3, dtype=self.dtype, name="conv0")(x))
        x1 = act(sn(2 * nf, nf, 4, 2, "conv1")(x0, train))
        x2 = act(sn(4 * nf, 2 * nf, 4, 2, "conv2")(x1, train))
        x3 = act(sn(8 * nf, 4 * nf, 4, 2, "conv3")(x2, train))
        x4 = act(sn(4 * nf, 8 * nf, 3, 1, "conv4")(upsample2x_bilinear(x3), train))
        if skip:
            x4 = x4 + x2
        x5 = act(sn(2 * nf, 4 * nf, 3, 1, "conv5")(upsample2x_bilinear(x4), train))
        if skip:
            x5 = x5 + x1
        x6 = act(sn(nf, 2 * nf, 3, 1, "conv6")(upsample2x_bilinear(x5), train))
        if skip:
            x6 = x6 + x0
        out = act(sn(nf, nf, 3, 1, "conv7")(x6, train))
        out = act(sn(nf, nf, 3, 1, "conv8")(out, train))
        return conv(1, nf, dtype=self.dtype, name="conv9")(out).astype(jnp.float32)
