"""Frozen VGG19 feature extractor for the perceptual loss (reference/TRAINING.md §2.5).

torchvision `vgg19` `features` up to conv5_4: 3x3 convs (padding 1) with ReLU, 2x2/2
max-pools after conv1_2, 2_2, 3_4, 4_4. The loss reads features *before* the ReLU at
conv1_2, conv2_2, conv3_4, conv4_4, conv5_4, after ImageNet mean/std normalisation of the
[0,1] RGB input. Weights come from the user's torchvision ImageNet file
(`vgg19-dcbb9e9d.pth`), read with `kdsr_jax.convert.torch_io.load_pth` (no torch).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdsr_jax.convert import torch_io

IMAGENET_MEAN = (0.485, 0.456, 0.406)   # §2.5 use_input_norm
IMAGENET_STD = (0.229, 0.224, 0.225)

# (name, out channels) per block; a max-pool follows every block but the last.
BLOCKS = (
    (("conv1_1", 64), ("conv1_2", 64)),
    (("conv2_1", 128), ("conv2_2", 128)),
    (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256), ("conv3_4", 256)),
    (("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), ("conv4_4", 512)),
    (("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512), ("conv5_4", 512)),
)
LAYER_NAMES = tuple(name for block in BLOCKS for name, _ in block)


def torch_feature_indices() -> dict[str, int]:
    """conv name -> index in torchvision's `vgg19().features` (conv, ReLU, ..., pool)."""
    out, idx = {}, 0
    for b, block in enumerate(BLOCKS):
        for name, _ in block:
            out[name] = idx
            idx += 2          # conv + ReLU
        if b < len(BLOCKS) - 1:
            idx += 1          # max-pool
    return out


class VGG19Features(nn.Module):
    """(B, H, W, 3) in [0,1] -> {layer: pre-ReLU features} for the requested layers."""

    layers: tuple[str, ...] = ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4")
    normalize: bool = True

    @nn.compact
    def __call__(self, x):
        if self.normalize:
            x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
        wanted, last = set(self.layers), max(LAYER_NAMES.index(n) for n in self.layers)
        feats, i = {}, 0
        for b, block in enumerate(BLOCKS):
            for name, ch in block:
                x = nn.Conv(ch, (3, 3), padding=1, name=name)(x)
                if name in wanted:
                    feats[name] = x
                if i == last:
                    return feats
                x = nn.relu(x)
                i += 1
            if b < len(BLOCKS) - 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return feats


def random_params(key: jax.Array, layers=VGG19Features.layers) -> dict[str, Any]:
    """Random weights (tests and smoke runs only: not a perceptual loss)."""
    return VGG19Features(layers=tuple(layers)).init(key, jnp.zeros((1, 32, 32, 3)))["params"]


def params_from_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """torchvision `features.<i>.weight/bias` (OIHW) -> Flax params (HWIO)."""
    params = {}
    for name, idx in torch_feature_indices().items():
        wk, bk = f"features.{idx}.weight", f"features.{idx}.bias"
        if wk not in sd or bk not in sd:
            raise ValueError(f"not a torchvision vgg19 state dict: missing {wk!r}")
        w = np.asarray(sd[wk], np.float32)
        params[name] = {"kernel": jnp.asarray(np.transpose(w, (2, 3, 1, 0))),
                        "bias": jnp.asarray(np.asarray(sd[bk], np.float32))}
    return params


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def load_torchvision_vgg19(path: str) -> dict[str, Any]:
    """Flax params from torchvision's ImageNet `vgg19` `.pth` file (clear error if absent)."""
    if not path:
        raise ValueError("the perceptual loss needs torchvision's ImageNet VGG19 weights: "
                         "pass --config.perceptual.vgg_path=/path/to/vgg19-dcbb9e9d.pth "
                         "(or --config.perceptual.weight=0 to train without it)")
    if not os.path.isfile(path):
        raise ValueError(f"VGG19 weights not found: {path} (torchvision vgg19-dcbb9e9d.pth)")
    return params_from_state_dict(_flatten(torch_io.load_pth(path)))
