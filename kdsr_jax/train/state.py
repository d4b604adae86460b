"""The training state: everything a checkpoint must hold to resume exactly.

Fields that a stage does not use are empty dicts (e.g. no EMA in the classic stages, no
discriminator outside KDSRGAN_S). The frozen teacher and the VGG19 are *not* part of the
state: they are loaded at start-up and passed to the step as a separate argument.
Optimizer states are kept per parameter group ('G', 'E') so that a group without a
gradient is skipped the way torch.optim.Adam skips it (reference/TRAINING.md §1.5,
encoder-only warm-up: the generator's Adam moments and step count stay untouched).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array          # int32 (), number of updates done
    rng: jax.Array           # uint32 (2,), base key; step keys are fold_in(rng, step)
    params: PyTree           # {'G': ..., 'E': ...}
    opt_state: PyTree        # {'G': adam state, 'E': adam state}
    ema_params: PyTree       # like params, or {} without EMA
    d_params: PyTree         # discriminator params, or {}
    d_spectral: PyTree       # discriminator spectral-norm u/v, or {}
    d_opt_state: PyTree      # discriminator adam state, or {}
    pool: PyTree             # Real-ESRGAN training-pair pool, or {}


def adam(optimizer_cfg) -> optax.GradientTransformation:
    """Adam without the learning rate (applied by the step from the schedule)."""
    return optax.scale_by_adam(b1=optimizer_cfg.b1, b2=optimizer_cfg.b2,
                               eps=optimizer_cfg.eps)


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
        opt_state={group: tx.init(p) for group, p in params.items()},
        ema_params=(jax.tree.map(jnp.copy, params if ema_params is None else ema_params)
                    if ema else {}),
        d_params=d_params,
        d_spectral=dict(d_variables["spectral"]) if d_variables else {},
        d_opt_state=tx.init(d_params) if d_variables else {},
        pool=pool if pool is not None else {},
    )
