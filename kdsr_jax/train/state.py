"""The training state (everything a checkpoint must hold to resume exactly) and the
Adam update of the official trainers.

Fields that a stage does not use are empty dicts (no EMA in the classic stages, no
discriminator outside KDSRGAN_S). The frozen teacher and the VGG19 are *not* part of
the state: they are loaded at start-up and passed to the step as a separate argument.

Adam as torch.optim.Adam runs it. torch keeps one state (step count, first and second
moments) per parameter tensor and skips a tensor whose `.grad` is None: neither the
tensor, its moments nor its step count move. A tensor gets no gradient when the loss
does not depend on it, e.g. the generator and the encoder's `compress` layer during the
KD-only encoder warm-up of the classic aniso student (`trainer_anisonoise_stage4.py`:
the KD loss reads only the encoder's MLP output). So the Adam state here is one optax
`scale_by_adam` state per parameter array (its own `count`), and `adam_update` updates
only the arrays the loss reads (`reached_by`, decided from the traced program, as
autograd decides from the graph); the others keep parameters and state bit for bit.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.extend.core as jex
import jax.numpy as jnp
import optax

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array          # int32 (), number of updates done
    rng: jax.Array           # uint32 (2,), base key; step keys are fold_in(rng, step)
    params: PyTree           # {'G': ..., 'E': ...}
    opt_state: PyTree        # like params, one Adam state (count, mu, nu) per array
    ema_params: PyTree       # like params, or {} without EMA
    d_params: PyTree         # discriminator params, or {}
    d_spectral: PyTree       # discriminator spectral-norm u/v, or {}
    d_opt_state: PyTree      # discriminator Adam state per array, or {}
    pool: PyTree             # Real-ESRGAN training-pair pools (one per group), or {}


def adam(optimizer_cfg) -> optax.GradientTransformation:
    """Adam without the learning rate (the step applies the schedule's lr), applied to
    one parameter array at a time (see `init_adam`, `adam_update`)."""
    return optax.scale_by_adam(b1=optimizer_cfg.b1, b2=optimizer_cfg.b2,
                               eps=optimizer_cfg.eps)


def init_adam(tx: optax.GradientTransformation, params: PyTree) -> PyTree:
    """One Adam state per parameter array (count 0, zero moments)."""
    return jax.tree.map(tx.init, params)


def adam_update(tx: optax.GradientTransformation, params: PyTree, grads: PyTree,
                opt_state: PyTree, lr, received: PyTree | None = None):
    """θ ← θ − lr · Adam(g) for every array with `received` True (default: all).

    `received` is a static pytree of Python bools shaped like `params`; arrays marked
    False keep their value and their Adam state, step count included (torch skips a
    parameter whose grad is None). Returns (params, opt_state).
    """
    treedef = jax.tree.structure(params)
    p_leaves = treedef.flatten_up_to(params)
    g_leaves = treedef.flatten_up_to(grads)
    s_leaves = treedef.flatten_up_to(opt_state)
    r_leaves = ([True] * len(p_leaves) if received is None
                else treedef.flatten_up_to(received))
    new_p, new_s = [], []
    for p, g, s, r in zip(p_leaves, g_leaves, s_leaves, r_leaves):
        if r:
            u, s = tx.update(g, s, p)
            p = p - lr * u
        new_p.append(p)
        new_s.append(s)
    return treedef.unflatten(new_p), treedef.unflatten(new_s)


def reached_by(loss_fn: Callable[[PyTree], jax.Array], params: PyTree) -> PyTree:
    """Which arrays of `params` the scalar `loss_fn(params)` depends on (static bools).

    Walks the traced program backwards from the loss: an operation whose output is
    needed needs all its inputs (conservative inside nested calls, like autograd's
    graph). Used to give no Adam update to parameters torch would see with grad None.
    """
    jaxpr = jax.make_jaxpr(loss_fn)(params).jaxpr
    needed = {v for v in jaxpr.outvars if not isinstance(v, jex.Literal)}
    for eqn in reversed(jaxpr.eqns):
        if any(v in needed for v in eqn.outvars):
            needed.update(v for v in eqn.invars if not isinstance(v, jex.Literal))
    flags = [v in needed for v in jaxpr.invars]
    return jax.tree.unflatten(jax.tree.structure(params), flags)


def create(*, params: PyTree, tx: optax.GradientTransformation, seed: int,
           ema: bool = False, ema_params: PyTree | None = None,
           d_variables: PyTree | None = None, pool: PyTree | None = None) -> TrainState:
    """A fresh state at step 0. `ema_params` defaults to a copy of `params`.

    Every array is copied: the state is donated to the step, so it must not alias
    arrays used elsewhere (e.g. the frozen teacher whose G initialises the student)."""
    params = jax.tree.map(jnp.copy, params)
    d_params = dict(d_variables["params"]) if d_variables else {}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.PRNGKey(seed),
        params=params,
        opt_state=init_adam(tx, params),
        ema_params=(jax.tree.map(jnp.copy, params if ema_params is None else ema_params)
                    if ema else {}),
        d_params=d_params,
        d_spectral=dict(d_variables["spectral"]) if d_variables else {},
        d_opt_state=init_adam(tx, d_params) if d_variables else {},
        pool=pool if pool is not None else {},
    )
