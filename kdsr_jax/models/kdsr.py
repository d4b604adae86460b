"""KDSR networks as the paper draws them (KDSR, "Knowledge Distillation based Degradation
Estimation for Blind Super-Resolution", ICLR 2023, Sec. 3 (method); official code:
`blindsr.py` of `KDSR-classic/model_TA`, `model_ST` and `KDSR-GAN/kdsrgan/archs`).

* `KDIDE`: the KD-IDE implicit degradation estimator, E (teacher KD-IDE_T, student
  KD-IDE_S); returns the IDR and the features the KD loss compares.
* `Generator`: the SR network G, a head conv, N `IDRDCRB` blocks (each an `IDRDDC`
  dynamic conv conditioned on the IDR, LReLU, conv, skip), a long skip and the upsampler.
* `TeacherSR` / `StudentSR`: E followed by G (the official `BlindSR` wrappers).

These are plain modules: `model.apply` is the reference forward on every backend. The
CPU speed path (strip packing) is an inference-time choice outside them, in
`kdsr_jax.inference.super_resolve`.

All arrays are NHWC. Parameter names are ours; `kdsr_jax.convert.mapping` holds the
one-to-one table to the official state-dict keys. Intermediate activations are sown into
the 'intermediates' collection (names follow the parity fixtures' `int_*` keys) and cost
nothing unless that collection is made mutable.

Besides the full forward, both wrappers expose the two halves as methods: `encode` (E
only -> (idr, fea)) and `generate(lr, idr)` (G only -> sr), e.g. for tiled inference
that computes the IDR once per image (`kdsr_jax.evaluate.tiling`).

Activation rematerialisation (`remat=True`, see `build_model`): every IDR-DCRB of G and
every ResBlock of KD-IDE is wrapped in `flax.linen.remat` (`jax.checkpoint`) with the
default policy, which saves nothing inside a block: the backward pass keeps only each
block's input and recomputes the block's inner activations (DDC output, LReLU, conv) from
it, one block at a time. Same parameters, values and gradients; less memory, one more
forward of the blocks per step.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kdsr_jax.models import dynconv as dynconv_lib
from kdsr_jax.models.layers import (conv, dense, lrelu, mean_shift_bias, pixel_shuffle,
                                    pixel_unshuffle)
from kdsr_jax.models.spec import ModelSpec

Dtype = Any
# KD-IDE's three widening convs after the ResBlocks: C -> 2C -> 2C -> 4C (official
# `KD_IDE`, Sequential entries E.(R+2), E.(R+4), E.(R+6)).
ENCODER_WIDTHS = (2, 2, 4)


def upsampler_stages(scale: int) -> list[int]:
    """Pixel-shuffle factors of the official `common.py` `Upsampler`: x4 = [2, 2],
    x2 = [2], x3 = [3]. Raises ValueError for other scales."""
    if scale == 3:
        return [3]
    if scale in (2, 4, 8):
        return [2] * {2: 1, 4: 2, 8: 3}[scale]
    raise ValueError(f"unsupported scale {scale}")


def encoder_in_channels(kind: str, scale: int) -> int:
    """KD-IDE input channels: teacher [LR, PixelUnshuffle_s(HR)] = 3 + 3 s^2 (the
    teacher also sees the HR image, paper Sec. 3), student LR only = 3."""
    return 3 + 3 * scale * scale if kind == "teacher" else 3


class IDRDDC(nn.Module):
    """IDR-DDC, the IDR-conditioned dynamic depthwise conv (paper Sec. 3; official
    `IDR_DDC`): `kernels` = Linear(C,C) - LReLU - Linear(C,9C), both bias-free, read
    with index 9c + 3ky + kx, then a per-sample depthwise 3x3 cross-correlation with zero
    padding. x (B, H, W, C), idr (B, C) -> (B, H, W, C)."""

    n_feats: int
    impl: str = "auto"
    dtype: Dtype = jnp.float32

    def setup(self):
        c = self.n_feats
        self.fc1 = dense(c, c, use_bias=False, dtype=self.dtype)
        self.fc2 = dense(9 * c, c, use_bias=False, dtype=self.dtype)

    def kernels(self, idr):
        """The per-sample kernels: idr (B, C) -> (B, 3, 3, C)."""
        v = self.fc2(lrelu(self.fc1(idr)))
        self.sow("intermediates", "kernel", v)                    # (B, 9C), torch order
        return dynconv_lib.kernels_from_torch_order(v)

    def __call__(self, x, idr):
        out = dynconv_lib.dynamic_depthwise_conv(x, self.kernels(idr), impl=self.impl)
        self.sow("intermediates", "dynconv", out)
        return out


class IDRDCRB(nn.Module):
    """IDR-DCRB, the dynamic conv residual block (paper Sec. 3; official `IDR_DCRB`):
    y = conv3x3(LReLU(IDR-DDC(x, idr))) + x. x (B, H, W, C) -> (B, H, W, C)."""

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
    """The official `DAG`: N IDR-DCRBs in sequence, all conditioned on the same IDR; no
    inner conv or skip. `remat` wraps each block in `nn.remat` (module docstring)."""

    n_feats: int
    n_blocks: int
    impl: str = "auto"
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x, idr):
        block = nn.remat(IDRDCRB) if self.remat else IDRDCRB
        for i in range(self.n_blocks):
            x = block(self.n_feats, self.impl, self.dtype, name=f"block_{i}")(x, idr)
        return x


class Generator(nn.Module):
    """The SR network G (paper Sec. 3; official `KDSR`): sub_mean, head conv,
    N IDR-DCRBs, conv + long skip, upsampler (conv + PyTorch-order pixel shuffle per
    factor), conv C->3, add_mean. MeanShift is a fixed constant here, not a parameter.
    lr (B, h, w, 3) in [0, rgb_range], idr (B, C) -> sr (B, s h, s w, 3) in `dtype`."""

    n_feats: int
    n_blocks: int
    scale: int
    rgb_range: float = 1.0
    impl: str = "auto"
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, lr, idr):
        c = self.n_feats
        x = lr.astype(self.dtype) + mean_shift_bias(self.rgb_range, -1).astype(self.dtype)
        f0 = conv(c, 3, dtype=self.dtype, name="head")(x)
        self.sow("intermediates", "head_out", f0)
        idr = idr.astype(self.dtype)
        r = BlockGroup(c, self.n_blocks, self.impl, self.dtype, self.remat, name="body")(f0, idr)
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


class ResBlock(nn.Module):
    """KD-IDE's ResBlock (official `common.py` `ResBlock`): conv - LReLU - conv, + x."""

    n_feats: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = conv(self.n_feats, self.n_feats, dtype=self.dtype, name="conv_0")(x)
        y = conv(self.n_feats, self.n_feats, dtype=self.dtype, name="conv_1")(lrelu(y))
        return y + x


class KDIDE(nn.Module):
    """KD-IDE, the knowledge-distillation based implicit degradation estimator E (paper
    Sec. 3; official `KD_IDE`). The teacher's KD-IDE_T sees [LR, PixelUnshuffle_s(HR)]
    (`in_channels` = 3 + 3 s^2), the student's KD-IDE_S the LR image only (3). Stem conv,
    R ResBlocks, convs C -> 2C -> 2C -> 4C, global average pool, MLP, compress.
    x (B, h, w, in_channels) -> (idr (B, C), fea (B, 4C)): `fea` is the post-LReLU MLP
    output the KD loss compares (teacher T_fea / student S_fea), `idr` = compress(fea)
    is the IDR that conditions every IDR-DDC."""

    n_feats: int
    n_resblocks: int
    in_channels: int
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x):
        c = self.n_feats
        self.sow("intermediates", "E_input", x)
        x = lrelu(conv(c, self.in_channels, dtype=self.dtype, name="stem")(x.astype(self.dtype)))
        block = nn.remat(ResBlock) if self.remat else ResBlock
        for j in range(self.n_resblocks):
            x = block(c, self.dtype, name=f"res_{j}")(x)
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


def _generator(spec: ModelSpec, dtype, remat: bool) -> Generator:
    return Generator(spec.n_feats, spec.n_blocks, spec.scale, spec.rgb_range, spec.dynconv,
                     dtype, remat, name="G")


def _encoder(spec: ModelSpec, dtype, remat: bool) -> KDIDE:
    return KDIDE(spec.n_feats, spec.n_resblocks, encoder_in_channels(spec.kind, spec.scale),
                 dtype, remat, name="E")


def _generate(g, lr, idr):
    """SR from G alone, float32 like every other output of the SR wrappers."""
    return g(lr, idr).astype(jnp.float32)


def _finish(sr, idr, fea, return_features):
    sr = sr.astype(jnp.float32)
    if return_features:
        return sr, {"idr": idr.astype(jnp.float32), "fea": fea.astype(jnp.float32)}
    return sr


class StudentSR(nn.Module):
    """Blind SR student KDSR_S (classic `model_ST` BlindSR / GAN `BlindSR_ST`): KD-IDE_S
    sees the LR image only. `apply(v, lr)` -> sr; `return_features=True` -> (sr, {'idr', 'fea'});
    `method='encode'` -> (idr, fea); `method='generate'` with (lr, idr) -> sr (G only)."""

    spec: ModelSpec
    dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self):
        self.G = _generator(self.spec, self.dtype, self.remat)
        self.E = _encoder(self.spec, self.dtype, self.remat)

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
    """KDSR teacher KDSR_T (classic `model_TA` BlindSR / GAN `BlindSR_TA`): KD-IDE_T sees
    [LR, PixelUnshuffle_s(HR)] (PyTorch channel order, LR first). Takes the clean HR
    (B, s*h, s*w, 3) and unshuffles it itself, at any scale (2, 3, 4).
    `method='generate'` with (lr, idr) runs G alone, as for the student."""

    spec: ModelSpec
    dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self):
        self.G = _generator(self.spec, self.dtype, self.remat)
        self.E = _encoder(self.spec, self.dtype, self.remat)

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
