"""Convert official KDSR PyTorch checkpoints to Flax and back (reference/ARCHITECTURE.md §7-§8).

    from kdsr_jax import convert
    model, variables = convert.from_torch("KDSRsM_iso_x4.pt")   # any official file kind
    sr = model.apply(variables, lr)                              # lr: (B, h, w, 3) in [0, 1]

Supported files (the kind, setting and sizes are inferred from key names and shapes):

* classic flat state dicts: teacher `G.*` + `E.*`, student `G.*` + `E_st.*`;
* GAN/BasicSR `{'params', 'params_ema'}`: `params_ema` is used, as the official ymls do
  (`params` is the non-EMA generator; it is used only when `params_ema` is absent);
* `{'params': ...}` of the U-Net SN discriminator (`weight_orig`, `weight_u`, `weight_v`);
* a leading `module.` on keys is stripped.

Conversion is strict: missing, unexpected or mis-shaped keys, or MeanShift constants that
differ from the official values, raise `ConversionError` (a ValueError, one line).

Degradation representation and distillation feature
----------------------------------------------------
The encoder returns two vectors: the IDR `idr` (B, C) that conditions every IDR-DDC block
(the output of `compress`, after its LeakyReLU) and the distillation feature `fea` (B, 4C),
the post-LeakyReLU MLP output that the KD loss compares between teacher and student
(`T_fea[0]` / `S_fea[0]` in the official code). Get them with

    sr, feats = model.apply(variables, lr, return_features=True)   # feats['idr'], feats['fea']
    idr, fea = model.apply(variables, lr, method="encode")         # encoder only, no SR

For a teacher pass the clean HR as well: `model.apply(variables, lr, hr, ...)`.

Round trip
----------
`save_converted(dir, spec, variables)` writes an orbax checkpoint plus `model.json`
(the ModelSpec); `load_converted(dir)` reads it back. `to_torch(spec, variables, path)`
writes a .pth in the official layout (classic: flat state dict with the MeanShift keys,
loadable by the official `load_state_dict(strict=True)`; GAN: `{'params', 'params_ema'}`
both holding the weights; discriminator: `{'params': ...}`). Import -> export -> import
is exact.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np

from kdsr_jax.convert import torch_io
from kdsr_jax.convert.mapping import (PARAM_KEY, PARAM_KEY_EMA, ConversionError,
                                      from_state_dict, state_dict_from_variables,
                                      torch_metadata)
from kdsr_jax.models import abstract_variables, build_model
from kdsr_jax.models.spec import ModelSpec

__all__ = ["ConversionError", "from_torch", "from_state_dict", "spec_of", "to_torch",
           "save_converted", "load_converted", "MODEL_JSON", "VARIABLES_DIR"]

MODEL_JSON = "model.json"
VARIABLES_DIR = "variables"
FORMAT_NAME = "kdsr-jax-converted"
FORMAT_VERSION = 1
# ModelSpec fields the weights cannot reveal, settable in `from_torch`.
SPEC_OVERRIDES = frozenset({"dynconv", "d_skip_connection"})


def spec_of(model) -> ModelSpec:
    """The ModelSpec of a built model (same as `model.spec`)."""
    return model.spec


def from_torch(path, dtype=None, **spec_overrides):
    """(model, variables) from an official .pth/.pt file.

    `spec_overrides` may set fields that weights cannot reveal, e.g. `dynconv='shift'`
    or `d_skip_connection=False`. `dtype` is the model's compute dtype (default float32).
    Raises `torch_io.CheckpointError` for unreadable files and `ConversionError` for
    files that do not hold a KDSR network (both ValueErrors with one-line messages).
    """
    unknown = sorted(set(spec_overrides) - SPEC_OVERRIDES)
    if unknown:
        raise ValueError(f"from_torch: cannot override {unknown}; only {sorted(SPEC_OVERRIDES)}")
    obj = torch_io.load_pth(path)
    try:
        spec, variables = from_state_dict(obj, **spec_overrides)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
    variables = jax.tree_util.tree_map(jax.numpy.asarray, variables)
    model = build_model(spec) if dtype is None else build_model(spec, dtype)
    return model, variables


def to_torch(spec: ModelSpec, variables, path) -> None:
    """Write `variables` as an official-layout .pth (see module docstring), zip-deflated
    (`torch.load` reads it; the same arrays under two keys are stored once), atomically."""
    sd = state_dict_from_variables(spec, variables)
    sd = torch_io.with_metadata(sd, torch_metadata(spec, sd.keys()))
    if spec.kind == "discriminator":
        obj = {PARAM_KEY: sd}
    elif spec.setting == "gan":
        obj = {PARAM_KEY: sd, PARAM_KEY_EMA: torch_io.with_metadata(sd, torch_io.metadata_of(sd))}
    else:
        obj = sd
    torch_io.save_pth(obj, path, compress=True)


def _abstract_variables(spec: ModelSpec):
    return abstract_variables(spec)


def save_converted(directory, spec: ModelSpec, variables, overwrite: bool = False) -> None:
    """Orbax checkpoint of `variables` in `directory/variables` plus `directory/model.json`.

    The whole directory is written into a temporary sibling and swapped in only after
    both parts are complete (`kdsr_jax.fileio.replacing`): a full disk or a crash leaves
    an existing converted model as it was. An existing converted model is replaced only
    with `overwrite=True` (scripts/convert.py: `--overwrite`); an existing folder that is
    not a converted model (other files) is never replaced. Write errors (disk full,
    permissions) raise `orbax_steps.CheckpointIOError` (an OSError, one line).
    """
    import orbax.checkpoint as ocp

    from kdsr_jax import fileio, orbax_steps

    directory = pathlib.Path(directory).absolute()
    if directory.exists():
        entries = set(p.name for p in directory.iterdir()) if directory.is_dir() else None
        if entries is None:
            raise ConversionError(f"{directory} exists and is not a directory")
        if entries and not entries <= {VARIABLES_DIR, MODEL_JSON}:
            raise ConversionError(f"{directory} exists and is not a converted model directory "
                                  f"(it holds {', '.join(sorted(entries)[:3])}); choose another "
                                  "output")
        if entries and not overwrite:
            raise ConversionError(f"{directory} already exists (a converted model); pass "
                                  "overwrite=True (scripts/convert.py: --overwrite) to replace it")
    abstract = _abstract_variables(spec)
    if jax.tree_util.tree_structure(abstract) != jax.tree_util.tree_structure(variables):
        raise ConversionError(f"variables do not match the model of spec {spec}")
    variables = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), variables)
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "spec": spec.to_dict()}
    with fileio.replacing(str(directory), directory=True) as tmp:
        tmp = pathlib.Path(tmp)
        with orbax_steps.contained(f"cannot write {directory}"):
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save(tmp / VARIABLES_DIR, variables)
                ckptr.wait_until_finished()
        (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)     # mkdtemp makes 0700


def load_converted(directory, dtype=None):
    """(model, variables) from a directory written by `save_converted`."""
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).absolute()
    meta_path = directory / MODEL_JSON
    if not meta_path.is_file() or not (directory / VARIABLES_DIR).is_dir():
        raise ConversionError(f"{directory} is not a converted model directory "
                              f"(needs {MODEL_JSON} and {VARIABLES_DIR}/)")
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_NAME:
            raise ValueError(f"format is {meta.get('format')!r}, not {FORMAT_NAME!r}")
        spec = ModelSpec.from_dict(meta["spec"])
    except (ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{meta_path}: invalid model description: {e}") from None
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(directory / VARIABLES_DIR, _abstract_variables(spec))
    model = build_model(spec) if dtype is None else build_model(spec, dtype)
    return model, dict(variables)
