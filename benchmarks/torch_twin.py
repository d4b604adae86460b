"""PyTorch twin of the KDSR SR networks, for side-by-side benchmarks (and the tests
that hold it to the official fixtures) only.

Why a twin and not the official code: the official repositories are not a dependency.
Module and attribute names are chosen so that `state_dict()` keys equal the official
ones, so the twin loads what `kdsr_jax.convert.mapping.state_dict_from_variables` (or
`kdsr_jax.convert.to_torch`) produces with `load_state_dict(strict=True)`, and it
follows the official numerics: MeanShift as a frozen 1x1 conv, IDR-DDC as a grouped
conv over a (1, B*C, H, W) view, NCHW throughout. That is what it is for: timing the
official formulation in PyTorch, which is why it stays torch code next to the Flax
modules rather than being generated from them. Everything that is a fact about the
network rather than about torch (the MeanShift mean, the LReLU slope, the kernel size,
KD-IDE's widths and input channels, the upsampler's stages) is read from
`kdsr_jax.models`, so there is one definition of each.

Never imported by the `kdsr_jax` package: torch is a test/benchmark-only dependency and
this module imports it at the top.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from kdsr_jax.convert.mapping import state_dict_from_variables
from kdsr_jax.models.dynconv import KERNEL_SIZE as KERNEL
from kdsr_jax.models.kdsr import ENCODER_WIDTHS, encoder_in_channels, upsampler_stages
from kdsr_jax.models.layers import LRELU_SLOPE, mean_shift_bias
from kdsr_jax.models.spec import ModelSpec


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, KERNEL, padding=KERNEL // 2, bias=True)


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(LRELU_SLOPE, inplace=True)


class MeanShift(nn.Conv2d):
    """Frozen 1x1 conv (official `common.py` `MeanShift`): identity weight,
    bias = sign * rgb_range * mean."""

    def __init__(self, rgb_range: float, sign: int):
        super().__init__(3, 3, 1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(torch.from_numpy(mean_shift_bias(rgb_range, sign)))
        for p in self.parameters():
            p.requires_grad = False


class DynamicDepthwise(nn.Module):
    """Twin of IDR-DDC (`kdsr_jax.models.kdsr.IDRDDC`, official `IDR_DDC`): kernels from the IDR by Linear-LReLU-Linear (bias-free), applied
    per sample and channel as a grouped 3x3 cross-correlation, zero padding 1."""

    def __init__(self, c: int):
        super().__init__()
        self.kernel = nn.Sequential(nn.Linear(c, c, bias=False), _lrelu(),
                                    nn.Linear(c, c * KERNEL * KERNEL, bias=False))

    def forward(self, x, idr):
        b, c, h, w = x.shape
        k = self.kernel(idr).view(b * c, 1, KERNEL, KERNEL)   # channel c: [9c, 9c+9)
        out = F.conv2d(x.reshape(1, b * c, h, w), k, padding=KERNEL // 2, groups=b * c)
        return out.view(b, c, h, w)


class DynamicBlock(nn.Module):
    """Twin of IDR-DCRB (`IDRDCRB`, official `IDR_DCRB`): conv1(LReLU(DDC(x, d))) + x."""

    def __init__(self, c: int):
        super().__init__()
        self.da_conv1 = DynamicDepthwise(c)
        self.conv1 = _conv(c, c)
        self.relu = _lrelu()

    def forward(self, x, idr):
        return self.conv1(self.relu(self.da_conv1(x, idr))) + x


class BlockGroup(nn.Module):
    """Twin of `BlockGroup` (official `DAG`): N blocks, same IDR, no inner conv/skip."""

    def __init__(self, c: int, n: int):
        super().__init__()
        self.body = nn.ModuleList(DynamicBlock(c) for _ in range(n))

    def forward(self, x, idr):
        for block in self.body:
            x = block(x, idr)
        return x


def _upsampler(c: int, scale: int) -> nn.Sequential:
    """Official `common.py` `Upsampler`: [conv C->r^2 C, PixelShuffle(r)] per stage."""
    layers: list[nn.Module] = []
    for r in upsampler_stages(scale):
        layers += [_conv(c, r * r * c), nn.PixelShuffle(r)]
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """Twin of G (`Generator`, official `KDSR`)."""

    def __init__(self, c: int, n_blocks: int, scale: int, rgb_range: float):
        super().__init__()
        self.sub_mean = MeanShift(rgb_range, -1)
        self.add_mean = MeanShift(rgb_range, +1)
        self.head = nn.Sequential(_conv(3, c))
        self.body = nn.Sequential(BlockGroup(c, n_blocks), _conv(c, c))
        self.tail = nn.Sequential(_upsampler(c, scale), _conv(c, 3))

    def forward(self, lr, idr):
        f0 = self.head(self.sub_mean(lr))
        r = self.body[1](self.body[0](f0, idr)) + f0
        return self.add_mean(self.tail(r))


class ResBlock(nn.Module):
    """KD-IDE's ResBlock (official `common.py` `ResBlock`): conv-LReLU-conv, + x."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_conv(c, c), _lrelu(), _conv(c, c))

    def forward(self, x):
        return self.body(x) + x


class KDIDE(nn.Module):
    """Twin of KD-IDE (`kdsr_jax.models.kdsr.KDIDE`, official `KD_IDE`): returns
    (idr (B, C), fea (B, 4C))."""

    def __init__(self, c: int, n_resblocks: int, cin: int):
        super().__init__()
        layers: list[nn.Module] = [_conv(cin, c), _lrelu()]
        layers += [ResBlock(c) for _ in range(n_resblocks)]
        width = c
        for mult in ENCODER_WIDTHS:
            layers += [_conv(width, mult * c), _lrelu()]
            width = mult * c
        layers += [nn.AdaptiveAvgPool2d(1)]
        self.E = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Linear(4 * c, 4 * c), _lrelu(),
                                 nn.Linear(4 * c, 4 * c), _lrelu())
        self.compress = nn.Sequential(nn.Linear(4 * c, c), _lrelu())

    def forward(self, x):
        fea = self.mlp(self.E(x).flatten(1))
        return self.compress(fea), fea


class StudentTwin(nn.Module):
    """Student BlindSR: `forward(lr)` -> sr (NCHW). Keys `G.*` + `E_st.*`."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.G = Generator(spec.n_feats, spec.n_blocks, spec.scale, spec.rgb_range)
        self.E_st = KDIDE(spec.n_feats, spec.n_resblocks, encoder_in_channels("student", spec.scale))

    def forward(self, lr):
        idr, _ = self.E_st(lr)
        return self.G(lr, idr)


class TeacherTwin(nn.Module):
    """Teacher BlindSR: `forward(lr, hr)` -> sr; E sees [LR, PixelUnshuffle_s(HR)].
    Keys `G.*` + `E.*`."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.scale = spec.scale
        self.G = Generator(spec.n_feats, spec.n_blocks, spec.scale, spec.rgb_range)
        self.E = KDIDE(spec.n_feats, spec.n_resblocks, encoder_in_channels("teacher", spec.scale))

    def forward(self, lr, hr):
        idr, _ = self.E(torch.cat([lr, F.pixel_unshuffle(hr, self.scale)], dim=1))
        return self.G(lr, idr)


def build_twin(spec: ModelSpec) -> nn.Module:
    """The twin of an SR `spec` (student or teacher), in eval mode."""
    if spec.kind == "student":
        return StudentTwin(spec).eval()
    if spec.kind == "teacher":
        return TeacherTwin(spec).eval()
    raise ValueError(f"no torch twin for kind {spec.kind!r} (SR models only)")


def twin_from_variables(spec: ModelSpec, variables) -> nn.Module:
    """A twin holding exactly the weights of the Flax `variables` (strict load through
    the converter's official-layout state dict)."""
    sd = state_dict_from_variables(spec, variables)
    twin = build_twin(spec)
    twin.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in sd.items()},
                         strict=True)
    return twin


def nhwc_to_nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def nchw_to_nhwc(t: torch.Tensor) -> np.ndarray:
    """A float32 NHWC numpy copy of an NCHW tensor from any device or dtype."""
    return t.detach().float().cpu().numpy().transpose(0, 2, 3, 1)
