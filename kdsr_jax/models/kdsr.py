"""KDSR networks: the SR generator G, the degradation encoder KD-IDE, and the teacher /
student wrappers (paper: "Knowledge Distillation based Degradation Estimation for Blind
Super-Resolution", ICLR 2023; reference/ARCHITECTURE.md §2-§4).

All arrays are NHWC. Parameter names are ours; `kdsr_jax.convert.mapping` holds the
one-to-one table to the official state-dict keys. Intermediate activations are sown into
the 'intermediates' collection (names follow the parity fixtures' `int_*` keys) and cost
nothing unless that collection is made mutable.

Besides the full forward, both wrappers expose the two halves as methods: `encode` (E
only -> (idr, fea)) and `generate(lr, idr)` (G only -> sr), e.g. for tiled inference
that computes the IDR once per image (`kdsr_jax.evaluate.tiling`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kdsr_jax.models import dynconv as dynconv_lib
from kdsr_jax.models import packed
from kdsr_jax.models.layers import (conv, dense, lrelu, mean_shift_bias, pixel_shuffle,
                                    pixel_unshuffle)
from kdsr_jax.models.spec import ModelSpec

Dtype = Any
# The encoder's three widening convs: C -> 2C -> 2C -> 4C (reference §3).
ENCODER_WIDTHS = (2, 2, 4)


def upsampler_stages(scale: int) -> list[int]:
    """Pixel-shuffle factors of the Upsampler (reference §1.4): x4 = [2, 2], x2 = [2], x3 = [3]."""
    if scale == 3:
        return [3]
    if scale in (2, 4, 8):
        return [2] * {2: 1, 4: 2, 8: 3}[scale]
    raise ValueError(f"unsupported scale {scale}")


def encoder_in_channels(kind: str, scale: int) -> int:
    """Teacher: [LR, PixelUnshuffle_s(HR)] = 3 + 3 s^2 channels; student: LR only (§3.1)."""
    return 3 + 3 * scale * scale if kind == "teacher" else 3


class IDRDDC(nn.Module):
    """IDR-conditioned dynamic depthwise conv (§2.1): Linear(C,C) - LReLU - Linear(C,9C),
    both bias-free, reshaped with index 9c + 3ky + kx, then a per-sample depthwise 3x3
    cross-correlation with zero padding."""

    n_feats: int
    impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, idr):
        c = self.n_feats
        v = dense(c, c, use_bias=False, dtype=self.dtype, name="fc1")(idr)
        v = dense(9 * c, c, use_bias=False, dtype=self.dtype, name="fc2")(lrelu(v))
        self.sow("intermediates", "kernel", v)                    # (B, 9C), torch order
        kernels = dynconv_lib.kernels_from_torch_order(v)                # (B, 3, 3, C)
        out = dynconv_lib.dynamic_depthwise_conv(x, kernels, impl=self.impl)
        self.sow("intermediates", "dynconv", out)
        return out


class IDRDCRB(nn.Module):
    """IDR-DCRB (§2.2): y = conv3x3(LReLU(DDC(x, d))) + x."""

    n_feats: int
    impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, idr):
        y = IDRDDC(self.n_feats, self.impl, self.dtype, name="ddc")(x, idr)
        y = conv(self.n_feats, self.n_feats, dtype=self.dtype, name="conv")(lrelu(y)) + x
        self.sow("intermediates", "out", y)
        return y


class BlockGroup(nn.Module):
    """`DAG` (§2.3): N IDR-DCRBs in sequence, all conditioned on the same IDR; no inner
    conv or skip."""

    n_feats: int
    n_blocks: int
    impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, idr):
        for i in range(self.n_blocks):
            x = IDRDCRB(self.n_feats, self.impl, self.dtype, name=f"block_{i}")(x, idr)
        return x


class Generator(nn.Module):
    """The KDSR SR network G (§2.4): sub_mean, head conv, block group, conv + long skip,
    Upsampler (conv + PyTorch-order pixel shuffle), conv C->3, add_mean. MeanShift is a
    fixed constant here, not a parameter."""

    n_feats: int
    n_blocks: int
    scale: int
    rgb_range: float = 1.0
    impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, lr, idr):
        if self._packed_path_applies(lr):
            reference = self.clone(parent=None, impl="shift")
            forward = packed.with_reference_gradient(
                lambda params, lr, idr: packed.generator(
                    params, lr, idr, self.n_blocks, upsampler_stages(self.scale), self.rgb_range),
                lambda params, lr, idr: reference.apply({"params": params}, lr, idr))
            return forward(self.variables["params"], lr, idr.astype(jnp.float32))
        c = self.n_feats
        x = lr.astype(self.dtype) + mean_shift_bias(self.rgb_range, -1).astype(self.dtype)
        f0 = conv(c, 3, dtype=self.dtype, name="head")(x)
        self.sow("intermediates", "head_out", f0)
        idr = idr.astype(self.dtype)
        r = BlockGroup(c, self.n_blocks, self.impl, self.dtype, name="body")(f0, idr)
        self.sow("intermediates", "dag_out", r)
        r = conv(c, c, dtype=self.dtype, name="body_conv")(r) + f0
        self.sow("intermediates", "tail_in", r)
        for k, factor in enumerate(upsampler_stages(self.scale)):
            r = conv(factor * factor * c, c, dtype=self.dtype, name=f"up_{k}")(r)
            r = pixel_shuffle(r, factor)
        self.sow("intermediates", "upsampled", r)
        y = conv(3, c, dtype=self.dtype, name="tail")(r)
        self.sow("intermediates", "tail_out", y)
        return y + mean_shift_bias(self.rgb_range, +1).astype(self.dtype)

    def _packed_path_applies(self, lr) -> bool:
        """The CPU fast path (`packed.generator`: same values; derivatives from this
        module-by-module path) is taken for a plain float32 forward with impl='auto';
        not while initialising or recording intermediates, nor for wide images or an
        explicit 'shift'/'grouped' (e.g. the tiling Runner, which intercepts submodules)."""
        return (self.impl == "auto" and self.dtype == jnp.float32 and packed.applies(lr)
                and not self.is_initializing()
                and not self.is_mutable_collection("intermediates"))


class ResBlock(nn.Module):
    """Encoder ResBlock (§1.3): conv - LReLU - conv, + x."""

    n_feats: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = conv(self.n_feats, self.n_feats, dtype=self.dtype, name="conv_0")(x)
        y = conv(self.n_feats, self.n_feats, dtype=self.dtype, name="conv_1")(lrelu(y))
        return y + x


class Encoder(nn.Module):
    """KD-IDE degradation encoder (§3). Returns (idr (B, C), fea (B, 4C)): `fea` is the
    post-LReLU MLP output used by the distillation loss, `idr` = compress(fea)."""

    n_feats: int
    n_resblocks: int
    in_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.n_feats
        self.sow("intermediates", "E_input", x)
        x = lrelu(conv(c, self.in_channels, dtype=self.dtype, name="stem")(x.astype(self.dtype)))
        for j in range(self.n_resblocks):
            x = ResBlock(c, self.dtype, name=f"res_{j}")(x)
        width = c
        for k, mult in enumerate(ENCODER_WIDTHS):
            x = lrelu(conv(mult * c, width, dtype=self.dtype, name=f"expand_{k}")(x))
            width = mult * c
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))      # (B, 4C)
        self.sow("intermediates", "E_pooled", pooled)
        z = lrelu(dense(4 * c, 4 * c, dtype=self.dtype, name="mlp_0")(pooled))
        fea = lrelu(dense(4 * c, 4 * c, dtype=self.dtype, name="mlp_1")(z))
        idr = lrelu(dense(c, 4 * c, dtype=self.dtype, name="compress")(fea))
        return idr, fea


def _generator(spec: ModelSpec, dtype) -> Generator:
    return Generator(spec.n_feats, spec.n_blocks, spec.scale, spec.rgb_range, spec.dynconv,
                     dtype, name="G")


def _encoder(spec: ModelSpec, dtype) -> Encoder:
    return Encoder(spec.n_feats, spec.n_resblocks, encoder_in_channels(spec.kind, spec.scale),
                   dtype, name="E")


def _generate(g, lr, idr):
    """SR from G alone, float32 like every other output of the SR wrappers."""
    return g(lr, idr).astype(jnp.float32)


def _finish(sr, idr, fea, return_features):
    sr = sr.astype(jnp.float32)
    if return_features:
        return sr, {"idr": idr.astype(jnp.float32), "fea": fea.astype(jnp.float32)}
    return sr


class StudentSR(nn.Module):
    """Blind SR student (classic `model_ST` BlindSR / GAN `BlindSR_ST`): E sees the LR
    image only. `apply(v, lr)` -> sr; `return_features=True` -> (sr, {'idr', 'fea'});
    `method='encode'` -> (idr, fea); `method='generate'` with (lr, idr) -> sr (G only)."""

    spec: ModelSpec
    dtype: Dtype = jnp.float32

    def setup(self):
        self.G = _generator(self.spec, self.dtype)
        self.E = _encoder(self.spec, self.dtype)

    def encode(self, lr):
        idr, fea = self.E(lr)
        return idr.astype(jnp.float32), fea.astype(jnp.float32)

    def generate(self, lr, idr):
        """G alone on a given IDR (B, C): `generate(lr, encode(lr)[0]) == apply(lr)`."""
        return _generate(self.G, lr, idr)

    def __call__(self, lr, return_features: bool = False):
        idr, fea = self.E(lr)
        return _finish(self.G(lr, idr), idr, fea, return_features)


class TeacherSR(nn.Module):
    """KDSR teacher (classic `model_TA` BlindSR / GAN `BlindSR_TA`): E sees
    [LR, PixelUnshuffle_s(HR)] (PyTorch channel order, LR first). Takes the clean HR
    (B, s*h, s*w, 3) and unshuffles it itself, at any scale (2, 3, 4).
    `method='generate'` with (lr, idr) runs G alone, as for the student."""

    spec: ModelSpec
    dtype: Dtype = jnp.float32

    def setup(self):
        self.G = _generator(self.spec, self.dtype)
        self.E = _encoder(self.spec, self.dtype)

    def encoder_input(self, lr, hr):
        s = self.spec.scale
        if hr.shape[1] != lr.shape[1] * s or hr.shape[2] != lr.shape[2] * s:
            raise ValueError(f"teacher: hr {tuple(hr.shape)} must be {s}x lr {tuple(lr.shape)}")
        return jnp.concatenate([lr, pixel_unshuffle(hr, s)], axis=-1)

    def encode(self, lr, hr):
        idr, fea = self.E(self.encoder_input(lr, hr))
        return idr.astype(jnp.float32), fea.astype(jnp.float32)

    def generate(self, lr, idr):
        """G alone on a given IDR (no HR needed): `generate(lr, encode(lr, hr)[0])
        == apply(lr, hr)`."""
        return _generate(self.G, lr, idr)

    def __call__(self, lr, hr, return_features: bool = False):
        idr, fea = self.E(self.encoder_input(lr, hr))
        return _finish(self.G(lr, idr), idr, fea, return_features)
