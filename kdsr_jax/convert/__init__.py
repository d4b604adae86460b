"""Convert official KDSR PyTorch checkpoints to Flax and back (reference/ARCHITECTURE.md §7-§8).

    from kdsr_jax import convert
    model, variables = convert.from_torch("KDSRsM_iso_x4.pt")   # any official file kind
    sr = model.apply(variables, lr)                              # lr: (B, h, w, 3) in [0, 1]

Supported files (the kind, setting and sizes are inferred from key names and shapes):

* classic flat state dicts: teacher `G.*` + `E.*`, student `G.*` + `E_st.*`;
* GAN/BasicSR `{'params', 'params_ema'}`: `params_ema` is used, as the official ymls do
  (`params` is the non-EMA generator; it is used only when `params_ema` is absent);
* `{'params': ...}` of the U-Net SN discriminator (`weight_orig`, `weight_u`, `weight_v`);
* a state dict one level down under `state_dict`, `model`, `net`, ... (see
  `mapping.NESTED_KEYS`); a leading `module.` / `model.` on keys is stripped;
* any floating dtype (fp16 `.half()`, bf16, fp32, fp64): cast to float32, MeanShift
  constants checked within the stored dtype's precision;
* `torch.save` zip files and `.safetensors` files (read with the `safetensors` library),
  told apart by their content, whatever the file name (`.pth`, `.pt`, `.PTH`, `.ckpt`).

Conversion is strict: missing, unexpected or mis-shaped keys, MeanShift constants that
differ from the official values, or NaN/inf weights raise `ConversionError` (a
ValueError, one line, naming the keys).

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
import re
import struct

import jax
import numpy as np
import orbax.checkpoint as ocp
import safetensors

from kdsr_jax import fileio, orbax_steps
from kdsr_jax.convert import torch_io
from kdsr_jax.convert.mapping import (PARAM_KEY, PARAM_KEY_EMA, ConversionError,
                                      check_finite, from_state_dict,
                                      state_dict_from_variables, torch_metadata)
from kdsr_jax.models import abstract_variables, build_model
from kdsr_jax.models.layers import mean_shift_bias
from kdsr_jax.models.spec import MODEL_JSON, ModelSpec

__all__ = ["ConversionError", "from_torch", "from_state_dict", "load_state_file",
           "is_weight_file", "spec_of", "to_torch", "save_converted", "load_converted",
           "MODEL_JSON", "VARIABLES_DIR"]

VARIABLES_DIR = "variables"
FORMAT_NAME = "kdsr-jax-converted"
FORMAT_VERSION = 1
# ModelSpec fields the weights cannot reveal, settable in `from_torch`.
SPEC_OVERRIDES = frozenset({"dynconv", "d_skip_connection"})
# model.json record of the MeanShift constants the weights go with (not part of the
# orbax tree): an edited spec.rgb_range is caught against it.
CONSTANTS_KEY = "constants"


def spec_of(model) -> ModelSpec:
    """The ModelSpec of a built model (same as `model.spec`)."""
    return model.spec


_ZIP_MAGIC = b"PK\x03\x04"
_SAFETENSORS_MAX_HEADER = 100 << 20   # the format's own limit on the JSON header


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors: u64 little-endian header length, then a JSON object."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= min(size - 8, _SAFETENSORS_MAX_HEADER) and head[8:9] == b"{"


def weight_format(path) -> str | None:
    """'torch' (a torch.save zip, or a legacy pickle that load_pth explains),
    'safetensors', or None: decided by the file's first bytes, never by its name."""
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        size = path.stat().st_size
    except OSError:
        return None
    if head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80":
        return "torch"
    if _looks_like_safetensors(head, size):
        return "safetensors"
    return None


def is_weight_file(path) -> bool:
    """True when `path` is a file whose content is a torch.save or safetensors file."""
    return pathlib.Path(path).is_file() and weight_format(path) is not None


def _load_safetensors(path: pathlib.Path) -> dict:
    """A flat {key: numpy array} from a .safetensors file, dtypes kept (bf16 included:
    read through the library's flax backend, which numpy's lacks)."""
    try:
        with safetensors.safe_open(str(path), framework="flax") as f:
            return {k: np.asarray(f.get_tensor(k)) for k in f.keys()}
    except (safetensors.SafetensorError, OSError, ValueError, TypeError) as e:
        raise torch_io.CheckpointError(
            f"{path} is not a readable safetensors file: {torch_io._one_line(e)}") from None


def load_state_file(path):
    """The object saved in a weight file: a torch.save zip (`torch_io.load_pth`) or a
    safetensors file (a flat state dict), chosen by content. Raises
    `torch_io.CheckpointError` (one line) for anything else."""
    path = pathlib.Path(path)
    if path.is_file() and weight_format(path) == "safetensors":
        return _load_safetensors(path)
    return torch_io.load_pth(path)   # also explains empty, legacy, non-zip files


def from_torch(path, dtype=None, **spec_overrides):
    """(model, variables) from an official weight file: a torch.save `.pth`/`.pt`/`.ckpt`
    or a `.safetensors` file (told apart by content; see the module docstring).

    `spec_overrides` may set fields that weights cannot reveal, e.g. `dynconv='shift'`
    or `d_skip_connection=False`. `dtype` is the model's compute dtype (default float32).
    Raises `torch_io.CheckpointError` for unreadable files and `ConversionError` for
    files that do not hold a KDSR network (both ValueErrors with one-line messages).
    """
    unknown = sorted(set(spec_overrides) - SPEC_OVERRIDES)
    if unknown:
        raise ValueError(f"from_torch: cannot override {unknown}; only {sorted(SPEC_OVERRIDES)}")
    obj = load_state_file(path)
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
    if spec.kind != "discriminator":   # what the weights were converted with (load checks it)
        meta[CONSTANTS_KEY] = {"sub_mean_bias": mean_shift_bias(spec.rgb_range, -1).tolist()}
    with fileio.replacing(str(directory), directory=True) as tmp:
        tmp = pathlib.Path(tmp)
        with orbax_steps.contained(f"cannot write {directory}"):
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save(tmp / VARIABLES_DIR, variables)
                ckptr.wait_until_finished()
        (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)     # mkdtemp makes 0700


def _leaf_shapes(tree, prefix=()) -> dict[tuple[str, ...], tuple[int, ...]]:
    out = {}
    if isinstance(tree, dict) or hasattr(tree, "items"):
        for k, v in tree.items():
            out.update(_leaf_shapes(v, prefix + (str(k),)))
    else:
        out[prefix] = tuple(int(n) for n in getattr(tree, "shape", ()))
    return out


def _count(shapes, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for path in shapes if (m := rx.fullmatch("/".join(path)))})


def _sizes_from_shapes(shapes, kind: str) -> dict:
    """The ModelSpec size fields that stored variable shapes imply (None if unknown)."""
    get = shapes.get
    if kind == "discriminator":
        k = get(("params", "conv0", "kernel"))
        return {"d_num_feat": k[-1] if k else None}
    head = get(("params", "G", "head", "kernel"))
    c = head[-1] if head else None
    stem = get(("params", "E", "stem", "kernel"))
    # KD-IDE input: the student sees the LR (3 channels), the teacher LR + HR (more).
    implied_kind = None if not stem else ("student" if stem[2] == 3 else "teacher")
    ups = _count(shapes, r"params/G/up_(\d+)/kernel")
    scale = None
    if ups == 2:
        scale = 4
    elif ups == 1 and c and get(("params", "G", "up_0", "kernel")):
        scale = {4 * c: 2, 9 * c: 3}.get(get(("params", "G", "up_0", "kernel"))[-1])
    return {"kind": implied_kind, "n_feats": c,
            "n_blocks": _count(shapes, r"params/G/body/block_(\d+)/.*"),
            "n_resblocks": _count(shapes, r"params/E/res_(\d+)/.*"), "scale": scale}


def check_spec_against_weights(spec: ModelSpec, stored, where) -> None:
    """ConversionError naming the model.json field that disagrees with the stored
    variables' shapes (`stored`: a tree of anything with `.shape`)."""
    stored = _leaf_shapes(stored)
    expected = _leaf_shapes(_abstract_variables(spec))
    if stored == expected:
        return
    implied = _sizes_from_shapes(stored, spec.kind)
    fields = [f"{k}={getattr(spec, k)} but the weights have {k}={v}"
              for k, v in implied.items() if v is not None and v != getattr(spec, k)]
    if not fields:
        diff = sorted(set(stored) ^ set(expected)) or sorted(
            p for p in stored if stored[p] != expected.get(p))
        fields = [f"variables differ from a {spec.kind} of this spec at "
                  f"{'/'.join(diff[0]) if diff else '?'}"]
    raise ConversionError(f"{where}: model.json disagrees with the weights: "
                          + "; ".join(fields))


def _flat_named(tree, prefix="") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        out.update(_flat_named(v, name) if hasattr(v, "items") else {name: v})
    return out


def load_converted(directory, dtype=None):
    """(model, variables) from a directory written by `save_converted`.

    Checked before use (one-line ConversionError naming the problem): model.json is a
    valid spec; its size fields (n_feats, n_blocks, n_resblocks, scale, d_num_feat)
    match the stored variable shapes; its rgb_range matches the MeanShift constants the
    weights were converted with (when model.json records them); no weight is NaN/inf.
    """
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
    recorded = (meta.get(CONSTANTS_KEY) or {}).get("sub_mean_bias")
    if recorded is not None and spec.kind != "discriminator" and not np.allclose(
            np.asarray(recorded, np.float64), mean_shift_bias(spec.rgb_range, -1),
            rtol=1e-6, atol=1e-7):
        implied = -float(recorded[0]) / float(-mean_shift_bias(1.0, -1)[0])
        raise ConversionError(f"{meta_path}: model.json disagrees with the weights: "
                              f"rgb_range={spec.rgb_range:g} but the weights were "
                              f"converted with rgb_range={implied:g}")
    with ocp.StandardCheckpointer() as ckptr:
        try:
            stored = ckptr.metadata(directory / VARIABLES_DIR)
            stored = getattr(stored, "item_metadata", stored)
            stored = getattr(stored, "tree", stored)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConversionError(f"{directory / VARIABLES_DIR}: unreadable weights "
                                  f"({torch_io._one_line(e)})") from None
        check_spec_against_weights(spec, stored, meta_path)
        variables = ckptr.restore(directory / VARIABLES_DIR, _abstract_variables(spec))
    try:
        check_finite(_flat_named(variables))
    except ConversionError as e:
        raise ConversionError(f"{directory}: {e}") from None
    model = build_model(spec) if dtype is None else build_model(spec, dtype)
    return model, dict(variables)
