"""kdsr_jax.models: Flax (linen) KDSR networks, NHWC.

* `build_model(spec, dtype, remat)` -> a `flax.linen.Module` with a `.spec` attribute:
  `StudentSR`, `TeacherSR` (KD-IDE + G, `models.kdsr`) or `UNetDiscriminatorSN`
  (the KDSR-GAN discriminator, `models.discriminator`). `dtype` is the compute dtype
  (e.g. jnp.bfloat16); parameters stay float32.
* `init_variables(spec, key, lr_hw)` -> variables: `{'params': {'G', 'E'}}` for SR
  models, `{'params', 'spectral'}` for the discriminator.
* `count_params(variables_or_shapes)`: number of trainable parameters. The official
  torch count additionally includes the 24 frozen MeanShift values
  (`MEANSHIFT_TORCH_PARAMS`), which are constants here.

Usage:
    student: `model.apply(v, lr)`, `model.apply(v, lr, return_features=True)` ->
             `(sr, {'idr': (B, C), 'fea': (B, 4C)})`, `model.apply(v, lr, method='encode')`
             -> `(idr, fea)`; `model.apply(v, lr, idr, method='generate')` -> sr (G only).
    teacher: the same with `(lr, hr)`, except `method='generate'`, which takes
             `(lr, idr)` as for the student.
    D:       `model.apply(v, x)`; `model.apply(v, x, train=True, mutable=['spectral'])`.
`model.apply` is the plain reference forward on every backend; for inference,
`kdsr_jax.inference.super_resolve` picks the fastest formulation for the backend.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from kdsr_jax.models.discriminator import UNetDiscriminatorSN
from kdsr_jax.models.kdsr import KDIDE, Generator, StudentSR, TeacherSR
from kdsr_jax.models.spec import PRESETS, ModelSpec, preset

# Two frozen MeanShift 1x1 convs (3x3 weight + 3 bias each) that torch counts as
# parameters (official `common.py` `MeanShift`, 2 x (9 + 3) = 24); here they are constants.
MEANSHIFT_TORCH_PARAMS = 24

__all__ = ["ModelSpec", "preset", "PRESETS", "build_model", "init_variables",
           "count_params", "torch_param_count", "abstract_variables", "StudentSR", "TeacherSR",
           "KDIDE", "Generator", "UNetDiscriminatorSN", "MEANSHIFT_TORCH_PARAMS"]


def build_model(spec: ModelSpec, dtype=jnp.float32, remat: bool = False):
    """The Flax module for `spec` (compute dtype `dtype`, float32 parameters).

    `remat=True` (SR models) rematerialises activations in training: each IDR-DCRB of G
    and each ResBlock of KD-IDE runs under `flax.linen.remat` (`jax.checkpoint`, default
    policy: nothing inside a block is saved, its inner activations are recomputed in the
    backward pass from the block input). Parameters, outputs and gradients are the same
    as with `remat=False`; the step needs less memory and about one more forward of the
    blocks. It has no effect on a forward without gradients. Raises TypeError for a
    `spec` that is not a ModelSpec, ValueError for `remat` with the discriminator."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"build_model expects a ModelSpec, got {type(spec).__name__}")
    if spec.kind == "student":
        return StudentSR(spec, dtype, remat)
    if spec.kind == "teacher":
        return TeacherSR(spec, dtype, remat)
    if remat:
        raise ValueError("remat applies to the SR models (IDR-DCRB / KD-IDE blocks), "
                         "not to the discriminator")
    return UNetDiscriminatorSN(spec, dtype)


def example_inputs(spec: ModelSpec, lr_hw=(16, 16), batch: int = 1):
    """Zero inputs of the right shapes for `spec` (a tuple of positional args).
    For the discriminator `lr_hw` is the size of the image it judges."""
    h, w = lr_hw
    lr = jnp.zeros((batch, h, w, 3), jnp.float32)
    if spec.kind == "teacher":
        return (lr, jnp.zeros((batch, h * spec.scale, w * spec.scale, 3), jnp.float32))
    return (lr,)


def init_variables(spec: ModelSpec, key: jax.Array, lr_hw=(16, 16)):
    """Freshly initialised variables for `spec`, with PyTorch's default init (as the
    official code, which never re-initialises): every conv/linear weight and bias ~ U(-1/sqrt(fan_in), +1/sqrt(fan_in)),
    spectral-norm u / v = normalised N(0, 1) vectors, as torch's spectral_norm does.

    Same distribution as `model.init`, but all values come from one uniform and one
    normal draw: compiling one threefry call per parameter (what flax's per-parameter
    initialisers do) takes tens of seconds on CPU, this takes well under a second.
    """
    return _draw_variables(abstract_variables(spec, lr_hw), key)


def abstract_variables(spec: ModelSpec, lr_hw=(16, 16)):
    """Shapes/dtypes of `init_variables(spec, ...)` as `jax.ShapeDtypeStruct`s (no compute)."""
    model = build_model(spec)
    return jax.eval_shape(model.init, {"params": jax.random.key(0)},
                          *example_inputs(spec, lr_hw))


def _draw_variables(shapes, key):
    """All variables from one uniform and one normal draw. With a concrete key the
    slicing happens in numpy (no compilation at all); under a trace (e.g.
    `jax.eval_shape`) the same steps run as traced jnp ops."""
    flat = traverse_util.flatten_dict(shapes["params"])
    spectral = traverse_util.flatten_dict(shapes.get("spectral", {}))
    params_key, spectral_key = jax.random.split(key)
    try:
        uniform = np.asarray(jax.random.uniform(
            params_key, (sum(x.size for x in flat.values()),), jnp.float32, -1.0, 1.0))
        normal = np.asarray(jax.random.normal(
            spectral_key, (sum(x.size for x in spectral.values()),), jnp.float32))
        xp = np
    except jax.errors.TracerArrayConversionError:
        uniform = jax.random.uniform(
            params_key, (sum(x.size for x in flat.values()),), jnp.float32, -1.0, 1.0)
        normal = jax.random.normal(
            spectral_key, (sum(x.size for x in spectral.values()),), jnp.float32)
        xp = jnp

    def pieces(vec, leaves):
        offset = 0
        for path, leaf in leaves.items():
            yield path, leaf, vec[offset:offset + leaf.size].reshape(leaf.shape)
            offset += leaf.size

    params = {}
    for path, leaf, x in pieces(uniform, flat):
        # fan_in of the layer: its kernel's size without the output axis
        # (conv (kh, kw, in, out), dense (in, out)); a bias uses its sibling kernel.
        kernel = flat[path[:-1] + ("kernel",)]
        bound = np.float32(1.0 / math.sqrt(int(np.prod(kernel.shape[:-1]))))
        params[path] = jnp.asarray(x * bound, leaf.dtype)
    out = {"params": traverse_util.unflatten_dict(params)}
    if spectral:
        sn = {path: jnp.asarray(x / xp.maximum(xp.linalg.norm(x), np.float32(1e-12)), leaf.dtype)
              for path, leaf, x in pieces(normal, spectral)}
        out["spectral"] = traverse_util.unflatten_dict(sn)
    return out


def count_params(variables) -> int:
    """Number of trainable parameters (leaves of variables['params']); works on
    arrays or `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape`)."""
    params = variables["params"] if "params" in variables else variables
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


def torch_param_count(spec: ModelSpec) -> int:
    """The parameter count the official torch module reports (`sum(p.numel())`),
    computed without allocating: our trainable count + the 24 MeanShift constants for
    SR models."""
    n = count_params(abstract_variables(spec))
    return n if spec.kind == "discriminator" else n + MEANSHIFT_TORCH_PARAMS
