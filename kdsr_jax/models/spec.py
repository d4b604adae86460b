"""Model specifications: which KDSR network, at which size, and the named presets.

A `ModelSpec` is the small, JSON-serialisable description of a network that travels
with every checkpoint (converted or trained) so that `checkpoints.load` and
`convert.from_torch` can rebuild the Flax module. Sizes follow the official defaults
(classic `option.py`, GAN `options/*.yml`; C = n_feats, N = n_blocks, R = n_resblocks).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from kdsr_jax.models.dynconv import IMPLS

# The JSON file holding a ModelSpec, in training workdirs and converted directories.
MODEL_JSON = "model.json"

KINDS = ("teacher", "student", "discriminator")
SETTINGS = ("classic", "gan")
SCALES = (2, 3, 4)
DYNCONV_IMPLS = IMPLS


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What to build. `dynconv` picks the formulation of IDR-DDC's dynamic depthwise conv
    (see `kdsr_jax.models.dynconv`; 'auto' = 'shift'); it changes speed, never the
    function computed. Raises ValueError for an unknown kind/setting/scale/dynconv or a
    size below 1."""

    kind: str = "student"
    setting: str = "classic"
    n_feats: int = 64
    n_blocks: int = 53
    n_resblocks: int = 9
    scale: int = 4
    rgb_range: float = 1.0
    dynconv: str = "auto"
    # Discriminator only (UNetDiscriminatorSN).
    d_num_feat: int = 64
    d_skip_connection: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {SETTINGS}, got {self.setting!r}")
        if self.kind != "discriminator" and self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if self.dynconv not in DYNCONV_IMPLS:
            raise ValueError(f"dynconv must be one of {DYNCONV_IMPLS}, got {self.dynconv!r}")
        for name in ("n_feats", "n_blocks", "n_resblocks", "d_num_feat"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelSpec fields: {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "ModelSpec":
        return cls.from_dict(json.loads(s))


# Named presets: the paper's KDSRs-M / KDSRs-L (classic `option.py` defaults and the
# README's L setting) and KDSR-GAN (`options/*.yml`). "tiny" is ours: the demo/test size.
PRESETS: dict[str, dict[str, Any]] = {
    "KDSRs-M": dict(setting="classic", n_feats=64, n_blocks=53, n_resblocks=9),
    "KDSRs-L": dict(setting="classic", n_feats=128, n_blocks=28, n_resblocks=5),
    "KDSR-GAN": dict(setting="gan", n_feats=128, n_blocks=42, n_resblocks=6),
    "tiny": dict(setting="classic", n_feats=16, n_blocks=3, n_resblocks=2),
}


def preset(name: str, kind: str = "student", scale: int = 4, **overrides) -> ModelSpec:
    """A named preset as a ModelSpec, e.g. `preset("KDSRs-M", kind="teacher")`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return ModelSpec(kind=kind, scale=scale, **{**PRESETS[name], **overrides})
