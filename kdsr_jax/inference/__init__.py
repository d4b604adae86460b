"""Inference with a KDSR SR model: `super_resolve(model, variables, lr, hr=None) -> sr`.

`model.apply` (the modules of `kdsr_jax.models`) is the plain reference forward on every
backend. `super_resolve` computes the same function with the fastest formulation for
the backend, chosen at trace time from the backend and the input shape, with no global
state:

* CPU, float32 model, LR narrower than `cpu_conv.NARROW_WIDTH`: KD-IDE conv by conv with
  strip-packed convolutions (`cpu_conv`), then G on the strip-packed layout (`packed`)
  that keeps every LR feature map packed from the head conv to the first upsampling
  conv. The output is the plain forward's (`tests/test_packed.py`).
* CPU otherwise (wide images, bfloat16 models): the modules, with strip-packed
  convolutions wherever a conv is narrow enough for it to pay.
* GPU/TPU, or a CPU process limited to one CPU: `model.apply` unchanged.

Why: XLA's CPU convolution splits its work across threads only along a wide image
width, so a 64-pixel-wide LR image runs on one core; packing strips side by side gives
it the width (`benchmarks/README.md` has the numbers against the official PyTorch code).

`super_resolve` is a pure function of arrays for a given `model` (a hashable Flax
module), so it composes with `jax.jit`:
`jax.jit(super_resolve, static_argnums=0)(model, variables, lr)`. Training does not use
it: train steps differentiate `model.apply`.
"""

from __future__ import annotations

import contextlib
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdsr_jax.inference import cpu_conv, packed

__all__ = ["super_resolve", "generate", "formulation", "packing_pays", "strip_packed_convs"]


@contextlib.contextmanager
def strip_packed_convs():
    """Within this context, every `flax.linen.Conv` call of a module being applied
    computes its convolution with `cpu_conv.conv_general_dilated` (strip-packed where
    eligible, `lax.conv_general_dilated` otherwise): the same values, computed with both
    CPU cores on narrow images. The modules themselves are untouched; this is a
    `flax.linen.intercept_methods` interceptor, active only while tracing inside the
    `with` block. It runs each conv as a fresh `nn.Conv` apply, which passes through the
    interceptors registered inside this block again: enter it *outside* any interceptor
    that should see each conv call once (as the tiling Runner does with its masks)."""

    def interceptor(next_fun, args, kwargs, context):
        conv = context.module
        if (context.method_name != "__call__" or not isinstance(conv, nn.Conv)
                or conv.conv_general_dilated is not None
                or conv.conv_general_dilated_cls is not None):
            return next_fun(*args, **kwargs)
        packed_conv = conv.clone(parent=None,
                                 conv_general_dilated=cpu_conv.conv_general_dilated)
        return packed_conv.apply({"params": conv.variables["params"]}, *args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield


def packing_pays() -> bool:
    """Whether strip packing can speed anything up here: the default backend is the CPU
    and this process may run on at least two CPUs (XLA sizes its CPU thread pool from
    the affinity mask; with one thread the packing copies are pure overhead)."""
    if jax.default_backend() != "cpu":
        return False
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:      # macOS / Windows
        n = os.cpu_count() or 1
    return n >= 2


def formulation(model, lr) -> str:
    """Which formulation `super_resolve` uses for `model` on an LR batch shaped like
    `lr` on the current default backend: 'packed' (G on the strip-packed layout, KD-IDE
    with strip-packed convs), 'packed-convs' (the modules with strip-packed convs) or
    'plain' (`model.apply`: GPU/TPU, or a CPU process limited to one CPU)."""
    if not packing_pays():
        return "plain"
    if packed.applies(lr) and jnp.dtype(model.dtype) == jnp.float32:
        return "packed"
    return "packed-convs"


@contextlib.contextmanager
def _canvas_masks(valid_hw, canvas_hw):
    """Module-path twin of `packed.generator`'s `valid_hw`: every 4-D feature map that
    enters or leaves a submodule is zeroed outside each image's valid region, scaled to
    the map's resolution (the LR canvas is `canvas_hw`)."""

    ch, cw = canvas_hw

    def mask(x):
        if getattr(x, "ndim", 0) != 4 or x.shape[1] < ch or x.shape[1] % ch:
            return x                                      # not a feature map (e.g. kernels)
        factor = x.shape[1] // ch
        return packed.mask_outside(x, valid_hw, factor) if x.shape[2] == cw * factor else x

    def interceptor(next_fun, args, kwargs, context):
        return mask(next_fun(*[mask(a) for a in args], **kwargs))

    with nn.intercept_methods(interceptor):
        yield


def _check_model(model):
    spec = getattr(model, "spec", None)
    if spec is None or spec.kind not in ("student", "teacher"):
        raise ValueError("super_resolve needs a KDSR SR model (student or teacher), got "
                         f"{type(model).__name__}"
                         + (f" of kind {spec.kind!r}" if spec is not None else ""))
    return spec


def _check_lr(lr):
    if getattr(lr, "ndim", None) != 4 or lr.shape[-1] != 3:
        raise ValueError(f"lr must be (B, h, w, 3), got shape {getattr(lr, 'shape', None)}")


def _check_inputs(model, lr, hr):
    spec = _check_model(model)
    _check_lr(lr)
    if spec.kind == "teacher" and hr is None:
        raise ValueError("a KDSR teacher needs the HR image as well: "
                         "super_resolve(model, variables, lr, hr)")
    if spec.kind == "student" and hr is not None:
        raise ValueError("a KDSR student takes the LR image only (got an hr)")
    return (lr,) if hr is None else (lr, hr)


def super_resolve(model, variables, lr: jax.Array, hr: jax.Array | None = None) -> jax.Array:
    """The SR image of `lr` by a KDSR SR `model` (a `StudentSR` or `TeacherSR` from
    `kdsr_jax.models.build_model`), equal to `model.apply(variables, lr[, hr])`, computed
    the fastest way for the backend (module docstring).

    lr: (B, h, w, 3) float in [0, rgb_range]. hr: teachers only, the clean HR image
    (B, s h, s w, 3) their KD-IDE_T reads. Returns sr (B, s h, s w, 3) float32
    (not clipped). Raises ValueError for a model that is not an SR model, a teacher
    without `hr`, a student with `hr`, or an `lr` that is not (B, h, w, 3). Jit-able
    with `model` static."""
    args = _check_inputs(model, lr, hr)
    how = formulation(model, lr)
    if how == "plain":
        return model.apply(variables, *args)
    with strip_packed_convs():
        if how == "packed-convs":
            return model.apply(variables, *args)
        idr, _ = model.apply(variables, *args, method="encode")
    return generate(model, variables, lr, idr)


def generate(model, variables, lr: jax.Array, idr: jax.Array,
             valid_hw: jax.Array | None = None) -> jax.Array:
    """G alone on a given IDR, the fastest way for the backend: equal to
    `model.apply(variables, lr, idr, method='generate')`. lr (B, h, w, 3), idr (B, C)
    -> sr (B, s h, s w, 3) float32.

    `valid_hw` (B, 2) int, optional: image b fills only the top-left `valid_hw[b]` of
    the canvas `lr`; every feature map is then zero outside it, so the result inside
    `s * valid_hw[b]` is G on that image alone (zero padding at its true border; the
    tiling Runner's bucketed canvases). Zero outside. Raises ValueError like
    `super_resolve`."""
    _check_model(model)
    _check_lr(lr)
    how = formulation(model, lr)
    if how == "packed":
        g = model.bind({"params": variables["params"]}).G
        vhw = None if valid_hw is None else jnp.asarray(valid_hw, jnp.int32)
        return packed.generator(g, variables["params"]["G"], lr, idr, vhw)
    with contextlib.ExitStack() as stack:
        if how == "packed-convs":
            stack.enter_context(strip_packed_convs())   # outside the masks: see there
        if valid_hw is not None:
            stack.enter_context(_canvas_masks(jnp.asarray(valid_hw, jnp.int32), lr.shape[1:3]))
        return model.apply(variables, lr, idr, method="generate")
