"""The one-to-one table between official KDSR state-dict keys and our Flax variables
(reference/ARCHITECTURE.md §7, §8.3), plus spec inference and strict validation.

Works on plain numpy state dicts (what `torch_io.load_pth` returns); no file I/O here.

Torch -> Flax layouts: Conv2d weight (out, in, kh, kw) -> kernel (kh, kw, in, out);
Linear weight (out, in) -> kernel (in, out); biases and spectral-norm u / v unchanged.
The IDR-DDC kernel generator keeps the torch output order (9c + 3ky + kx), so no
permutation is needed. MeanShift keys (`G.sub_mean.*`, `G.add_mean.*`) are constants:
checked on import, regenerated on export.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Mapping

import jax
import numpy as np

from kdsr_jax.models import abstract_variables
from kdsr_jax.models.kdsr import upsampler_stages
from kdsr_jax.models.layers import RGB_MEAN, mean_shift_bias, mean_shift_weight
from kdsr_jax.models.spec import ModelSpec

# GAN/BasicSR wrapper keys (reference §8.2): the official ymls load `params_ema`.
PARAM_KEY_EMA = "params_ema"
PARAM_KEY = "params"
MEANSHIFT_KEYS = ("G.sub_mean.weight", "G.sub_mean.bias", "G.add_mean.weight", "G.add_mean.bias")
MEANSHIFT_ATOL = 1e-6
SN_CONVS = tuple(f"conv{i}" for i in range(1, 9))   # spectral-normed D convs (§7.4)
_MAX_LISTED = 6
# Keys that hold a state dict one level down, in order of preference (EMA first).
NESTED_KEYS = ("params_ema", "ema", "state_dict_ema", "state_dict", "model", "net", "net_g",
               "generator", "params")
# Key prefixes shared by every key of a wrapped model (e.g. Lightning's `model.`).
WRAPPER_PREFIXES = ("model.", "net_g.", "net.", "generator.")


class ConversionError(ValueError):
    """A state dict does not match any supported KDSR network (one-line message)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    torch_key: str
    collection: str          # 'params' or 'spectral'
    path: tuple[str, ...]    # path inside the collection
    layout: str              # 'conv', 'dense' or 'vector'


def to_flax(value: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv":
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    if layout == "dense":
        return np.ascontiguousarray(value.T)
    return np.asarray(value)


def to_torch_layout(value: np.ndarray, layout: str) -> np.ndarray:
    value = np.asarray(value)
    if layout == "conv":
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if layout == "dense":
        return np.ascontiguousarray(value.T)
    return value


def torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    if layout == "dense":
        return (shape[1], shape[0])
    return tuple(shape)


def _layer(torch_prefix: str, flax_path: tuple[str, ...], bias: bool = True,
           layout: str = "conv") -> list[Entry]:
    out = [Entry(f"{torch_prefix}.weight", "params", flax_path + ("kernel",), layout)]
    if bias:
        out.append(Entry(f"{torch_prefix}.bias", "params", flax_path + ("bias",), "vector"))
    return out


def encoder_prefix(kind: str) -> str:
    """Teacher encoder is `E`, student encoder `E_st` (reference §4.1)."""
    return "E" if kind == "teacher" else "E_st"


def entries(spec: ModelSpec) -> list[Entry]:
    """Every variable of `spec`'s model with its torch key, in official state-dict order
    (MeanShift constants excluded)."""
    if spec.kind == "discriminator":
        out = _layer("conv0", ("conv0",))
        for name in SN_CONVS:
            out += [Entry(f"{name}.weight_orig", "params", (name, "kernel"), "conv"),
                    Entry(f"{name}.weight_u", "spectral", (name, "u"), "vector"),
                    Entry(f"{name}.weight_v", "spectral", (name, "v"), "vector")]
        return out + _layer("conv9", ("conv9",))
    out = _layer("G.head.0", ("G", "head"))
    for i in range(spec.n_blocks):
        t, f = f"G.body.0.body.{i}", ("G", "body", f"block_{i}")
        out += _layer(f"{t}.da_conv1.kernel.0", f + ("ddc", "fc1"), bias=False, layout="dense")
        out += _layer(f"{t}.da_conv1.kernel.2", f + ("ddc", "fc2"), bias=False, layout="dense")
        out += _layer(f"{t}.conv1", f + ("conv",))
    out += _layer("G.body.1", ("G", "body_conv"))
    for k, _ in enumerate(upsampler_stages(spec.scale)):
        out += _layer(f"G.tail.0.{2 * k}", ("G", f"up_{k}"))   # conv, PixelShuffle, conv, ...
    out += _layer("G.tail.1", ("G", "tail"))
    e, r = encoder_prefix(spec.kind), spec.n_resblocks
    out += _layer(f"{e}.E.0", ("E", "stem"))
    for j in range(r):
        out += _layer(f"{e}.E.{j + 2}.body.0", ("E", f"res_{j}", "conv_0"))
        out += _layer(f"{e}.E.{j + 2}.body.2", ("E", f"res_{j}", "conv_1"))
    for k in range(3):   # E.(R+2), E.(R+4), E.(R+6): the widening convs (reference §3)
        out += _layer(f"{e}.E.{r + 2 + 2 * k}", ("E", f"expand_{k}"))
    out += _layer(f"{e}.mlp.0", ("E", "mlp_0"), layout="dense")
    out += _layer(f"{e}.mlp.2", ("E", "mlp_1"), layout="dense")
    out += _layer(f"{e}.compress.0", ("E", "compress"), layout="dense")
    return out


def _get(tree: Mapping, path: tuple[str, ...]):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def expected_torch_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """torch key -> shape for `spec`, derived from the Flax model itself (no allocation)."""
    shapes = abstract_variables(spec)
    out = {}
    if spec.kind != "discriminator":
        out.update({MEANSHIFT_KEYS[0]: (3, 3, 1, 1), MEANSHIFT_KEYS[1]: (3,),
                    MEANSHIFT_KEYS[2]: (3, 3, 1, 1), MEANSHIFT_KEYS[3]: (3,)})
    for e in entries(spec):
        out[e.torch_key] = torch_shape(_get(shapes[e.collection], e.path).shape, e.layout)
    return out


# ------------------------------------------------------------------ reading a state dict


def _is_array(v) -> bool:
    return isinstance(v, np.ndarray)


def _is_state_dict(v) -> bool:
    return isinstance(v, Mapping) and bool(v) and all(_is_array(x) for x in v.values())


def unwrap(obj: Any) -> tuple[dict[str, np.ndarray], str]:
    """The flat state dict inside a loaded checkpoint and its setting.

    * flat dict of arrays -> classic (reference §8.1);
    * {'params', 'params_ema'} -> GAN, uses `params_ema` like the official ymls
      (`params` is the raw, non-EMA generator); {'params'} alone -> GAN / discriminator;
    * a state dict one level down under one of `NESTED_KEYS` ('state_dict', 'model',
      'net', ...: what Lightning, BasicSR-style and hand-written trainers save next to
      their optimizer state) is read from there; other layouts are refused naming the
      keys that do hold state dicts.
    A leading `module.` (DataParallel) is stripped from every key, and a prefix shared
    by every key that names the wrapper (`model.`, `net.`, `net_g.`) as well.
    """
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError(f"not a state dict (got {type(obj).__name__})")
    if all(_is_array(v) for v in obj.values()):
        sd, setting = obj, "classic"
    elif set(obj) <= {PARAM_KEY, PARAM_KEY_EMA}:
        key = PARAM_KEY_EMA if PARAM_KEY_EMA in obj else PARAM_KEY
        sd, setting = obj[key], "gan"
        if not _is_state_dict(sd):
            raise ConversionError(f"checkpoint entry {key!r} is not a state dict of tensors")
    else:
        nested = [k for k in NESTED_KEYS if k in obj and (
            _is_state_dict(obj[k]) or (isinstance(obj[k], Mapping)
                                       and set(obj[k]) <= {PARAM_KEY, PARAM_KEY_EMA}
                                       and set(obj[k])))]
        if nested:
            # The first of NESTED_KEYS present wins: EMA weights before raw ones.
            try:
                sd, setting = unwrap(obj[nested[0]])
            except ConversionError as e:
                raise ConversionError(f"under key {nested[0]!r}: {e}") from None
            return sd, ("gan" if nested[0] in (PARAM_KEY, PARAM_KEY_EMA) else setting)
        holders = sorted(str(k) for k, v in obj.items() if _is_state_dict(v))
        bad = sorted(str(k) for k, v in obj.items() if not _is_array(v))
        if holders:
            raise ConversionError(
                f"unsupported checkpoint layout: state dicts under {holders[:_MAX_LISTED]} "
                f"(not one of {list(NESTED_KEYS)}); save the generator's alone, e.g. "
                f"torch.save(torch.load(f)[{holders[0]!r}], 'weights.pth')")
        raise ConversionError(
            "unsupported checkpoint layout: expected a flat state dict, "
            f"{{'params', 'params_ema'}} or one under {list(NESTED_KEYS)}; found "
            f"non-tensor entries {bad[:_MAX_LISTED]}")
    out = collections.OrderedDict()
    for k, v in sd.items():
        k = str(k)
        k = k[len("module."):] if k.startswith("module.") else k
        out[k] = v
    for prefix in WRAPPER_PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = collections.OrderedDict((k[len(prefix):], v) for k, v in out.items())
            break
    return out, setting


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def infer_spec(sd: Mapping[str, np.ndarray], setting: str, **overrides) -> ModelSpec:
    """Kind, C, N, R, scale and rgb_range from key names and shapes."""
    keys = list(sd)
    has_e = any(k.startswith("E.") for k in keys)
    has_est = any(k.startswith("E_st.") for k in keys)
    if "conv0.weight" in sd and not any(k.startswith("G.") for k in keys):
        spec = ModelSpec(kind="discriminator", setting="gan",
                         d_num_feat=int(sd["conv0.weight"].shape[0]))
        return spec.replace(**overrides)
    if "G.head.0.weight" not in sd or not (has_e or has_est):
        raise ConversionError("not a KDSR checkpoint: no G.head.0.weight and E.* / E_st.* keys "
                              "(nor a U-Net discriminator's conv0.weight)")
    if has_e and has_est:
        raise ConversionError("ambiguous checkpoint: has both teacher (E.*) and student "
                              "(E_st.*) encoder keys")
    kind = "student" if has_est else "teacher"
    e = encoder_prefix(kind)
    c = int(sd["G.head.0.weight"].shape[0])
    n_blocks = len(_indices(keys, r"G\.body\.0\.body\.(\d+)\."))
    n_res = len(_indices(keys, rf"{re.escape(e)}\.E\.(\d+)\.body\."))
    stages = _indices(keys, r"G\.tail\.0\.(\d+)\.weight")
    if len(stages) == 2:
        scale = 4
    elif len(stages) == 1:
        out_ch = int(sd[f"G.tail.0.{stages[0]}.weight"].shape[0])
        scale = {4 * c: 2, 9 * c: 3}.get(out_ch)
        if scale is None:
            raise ConversionError(f"cannot infer the scale: G.tail.0.{stages[0]}.weight has "
                                  f"{out_ch} output channels (expected {4 * c} or {9 * c})")
    else:
        raise ConversionError(f"cannot infer the scale from upsampler convs {stages}")
    if n_blocks < 1 or n_res < 1:
        raise ConversionError(f"found {n_blocks} IDR-DCRB blocks and {n_res} encoder "
                              "ResBlocks; both must be >= 1")
    spec = ModelSpec(kind=kind, setting=setting, n_feats=c, n_blocks=n_blocks,
                     n_resblocks=n_res, scale=scale, rgb_range=_infer_rgb_range(sd))
    return spec.replace(**overrides)


def stored_eps(v) -> float:
    """Machine epsilon of the dtype a tensor was stored in (fp16, bf16, fp32, fp64):
    the relative precision its values can carry."""
    dt = np.asarray(v).dtype
    if dt.name == "bfloat16":
        return 2.0 ** -7
    return float(np.finfo(dt).eps) if np.issubdtype(dt, np.floating) else 0.0


def _infer_rgb_range(sd) -> float:
    """rgb_range from `G.sub_mean.bias` = -rgb_range * RGB_MEAN. An integer range (1,
    255) is recognised within the precision of the stored dtype, so a `.half()` or bf16
    file gives exactly 1.0, not 0.999845."""
    b = sd.get("G.sub_mean.bias")
    if b is None or np.shape(b) != (3,):
        return 1.0   # reported as missing / mis-shaped by the strict check
    r = float(-np.asarray(b, np.float64)[0] / RGB_MEAN[0])
    tol = max(1e-4, 2.0 * stored_eps(b))
    return float(round(r)) if round(r) > 0 and abs(r - round(r)) <= tol * max(1.0, abs(r)) else r


def _listing(items: list[str]) -> str:
    more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def check_keys(sd: Mapping[str, np.ndarray], spec: ModelSpec) -> None:
    """Strict: every expected key present with its exact shape, nothing else, and the
    MeanShift constants equal to the official values. One-line ConversionError."""
    expected = expected_torch_shapes(spec)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(np.shape(sd[k]))} != {expected[k]}" for k in expected
             if k in sd and tuple(np.shape(sd[k])) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_listing(wrong)}")
    if problems:
        raise ConversionError(f"checkpoint does not match a {describe(spec)}: "
                              + "; ".join(problems))
    for k, v in sd.items():
        if not np.issubdtype(np.asarray(v).dtype, np.floating) and v.dtype.name != "bfloat16":
            raise ConversionError(f"{k} has dtype {v.dtype}; expected floating point")
    check_finite(sd)
    if spec.kind != "discriminator":
        # Tolerance: the official constants rounded to the stored dtype (fp16, bf16 ...).
        ref = meanshift_state(spec)
        bad = [k for k in MEANSHIFT_KEYS
               if not np.allclose(np.asarray(sd[k], np.float64), ref[k], rtol=0,
                                  atol=max(MEANSHIFT_ATOL, stored_eps(sd[k]))
                                  * max(1.0, spec.rgb_range))]
        if bad:
            raise ConversionError(f"MeanShift constants differ from the official values "
                                  f"(rgb_range={spec.rgb_range:g}): {_listing(bad)}")


def check_finite(tensors: Mapping[str, Any]) -> None:
    """ConversionError naming the first keys that hold NaN or inf (weights that would
    silently upscale to a black image)."""
    bad = [str(k) for k, v in tensors.items()
           if not np.all(np.isfinite(np.asarray(v, np.float32)))]
    if bad:
        raise ConversionError(f"non-finite weights (NaN or inf) in {_listing(bad)}")


def describe(spec: ModelSpec) -> str:
    if spec.kind == "discriminator":
        return f"U-Net SN discriminator (num_feat={spec.d_num_feat})"
    return (f"{spec.setting} {spec.kind} (n_feats={spec.n_feats}, n_blocks={spec.n_blocks}, "
            f"n_resblocks={spec.n_resblocks}, x{spec.scale})")


def meanshift_state(spec: ModelSpec) -> dict[str, np.ndarray]:
    return {"G.sub_mean.weight": mean_shift_weight(),
            "G.sub_mean.bias": mean_shift_bias(spec.rgb_range, -1),
            "G.add_mean.weight": mean_shift_weight(),
            "G.add_mean.bias": mean_shift_bias(spec.rgb_range, +1)}


def variables_from_state_dict(sd: Mapping[str, np.ndarray], spec: ModelSpec) -> dict:
    """Flax variables (numpy float32 leaves) from a validated flat state dict."""
    check_keys(sd, spec)
    variables: dict = {}
    for e in entries(spec):
        value = to_flax(np.asarray(sd[e.torch_key], dtype=np.float32), e.layout)
        _set(variables.setdefault(e.collection, {}), e.path, value)
    return variables


def from_state_dict(obj: Any, **overrides) -> tuple[ModelSpec, dict]:
    """(spec, variables) from a loaded official checkpoint object (see `unwrap`)."""
    sd, setting = unwrap(obj)
    spec = infer_spec(sd, setting, **overrides)
    return spec, variables_from_state_dict(sd, spec)


# ------------------------------------------------------------------ writing a state dict


def state_dict_from_variables(spec: ModelSpec, variables: Mapping) -> collections.OrderedDict:
    """The official flat state dict (float32 numpy, official key order, MeanShift
    constants included for SR models so `load_state_dict(strict=True)` works)."""
    sd = collections.OrderedDict()
    if spec.kind != "discriminator":
        sd.update(meanshift_state(spec))
    try:
        for e in entries(spec):
            value = np.asarray(jax.device_get(_get(variables[e.collection], e.path)), np.float32)
            sd[e.torch_key] = to_torch_layout(value, e.layout)
    except KeyError as err:
        raise ConversionError(f"variables do not match a {describe(spec)}: missing {err}") from None
    expected = expected_torch_shapes(spec)
    wrong = [f"{k} {v.shape} != {expected[k]}" for k, v in sd.items() if v.shape != expected[k]]
    if wrong:
        raise ConversionError(f"variables do not match a {describe(spec)}: {_listing(wrong)}")
    return sd


def torch_metadata(spec: ModelSpec, keys) -> collections.OrderedDict:
    """torch `_metadata` for the exported state dict: version 1 for every module, and the
    spectral-norm version record that torch's SN load hook requires (without it, torch
    expects an old-style `<conv>.weight` key)."""
    meta = collections.OrderedDict([("", {"version": 1})])
    for k in keys:
        parts = k.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            meta.setdefault(".".join(parts[:i]), {"version": 1})
    if spec.kind == "discriminator":
        for name in SN_CONVS:
            meta[name] = {"version": 1, "spectral_norm": {"weight.version": 1}}
    return meta
