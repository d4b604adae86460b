"""Training-pair pool of the Real-ESRGAN pipeline as explicit, checkpointable state.

Implements the training-pair pool of the KDSR-GAN / Real-ESRGAN models (BasicSR
`RealESRGANModel._dequeue_and_enqueue`): because the
resize/noise/order decisions are shared by a whole batch, KDSR-GAN mixes pairs of
different iterations through a pool of `queue_size = 180` (LQ, GT) pairs per process:

* while the pool is not full, the current batch is appended and trained on unchanged;
* once full, the whole pool is randomly permuted, the first B pairs form this
  iteration's batch, and the fresh batch is written into those B slots.

`init` builds the state (a dict pytree of arrays, so it can be checkpointed with orbax
and passed through `jax.jit`); `update` is pure and jittable. `queue_size % B == 0` is
required, as in the official code.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

QUEUE_SIZE = 180  # per-process pool size of the KDSR-GAN models (queue_size)


class PoolError(ValueError):
    """Raised for a pool/batch combination the pool cannot handle."""


def init(queue_size: int, lq_shape: Sequence[int], gt_shape: Sequence[int],
         dtype=jnp.float32, groups: int = 0) -> dict[str, jax.Array]:
    """Empty pool: lq (Q, *lq_shape), gt (Q, *gt_shape), count (int32 scalar).

    lq_shape / gt_shape are the per-pair shapes, e.g. (64, 64, 3) and (256, 256, 3).
    `groups` > 0: that many independent pools stacked on a leading axis (one per group
    of the per-process batch, `realesrgan.degrade_groups`).
    """
    if int(queue_size) < 1:
        raise PoolError(f"pool.init: queue_size must be >= 1, got {queue_size!r}")
    lead = (int(groups),) if groups else ()
    q = int(queue_size)
    return {
        "lq": jnp.zeros(lead + (q,) + tuple(lq_shape), dtype),
        "gt": jnp.zeros(lead + (q,) + tuple(gt_shape), dtype),
        "count": jnp.zeros(lead, jnp.int32),
    }


def _check(pool, batch):
    q = pool["lq"].shape[0]
    b = batch["lq"].shape[0]
    if batch["gt"].shape[0] != b:
        raise PoolError(f"pool.update: batch lq {tuple(batch['lq'].shape)} and gt "
                        f"{tuple(batch['gt'].shape)} have different batch sizes")
    if q % b:
        raise PoolError(f"pool.update: queue_size {q} must be divisible by the batch size "
                        f"{b} (batch lq shape {tuple(batch['lq'].shape)})")
    for name in ("lq", "gt"):
        if batch[name].shape[1:] != pool[name].shape[1:]:
            raise PoolError(f"pool.update: batch {name} shape {tuple(batch[name].shape)} "
                            f"does not match the pool's {tuple(pool[name].shape)}")
    return q, b


def update(pool: dict, batch: dict, key) -> tuple[dict, dict]:
    """One `_dequeue_and_enqueue`: returns (new pool, training batch).

    batch: {'lq': (B, ...), 'gt': (B, ...)}. Pure; jittable (the fill/steady branch is a
    `lax.cond` on the traced count).
    """
    q, b = _check(pool, batch)
    batch = {k: batch[k].astype(pool[k].dtype) for k in ("lq", "gt")}

    def fill(_):
        start = pool["count"]
        new = {k: jax.lax.dynamic_update_slice_in_dim(pool[k], batch[k], start, axis=0)
               for k in ("lq", "gt")}
        new["count"] = pool["count"] + b
        return new, batch

    def steady(_):
        perm = jax.random.permutation(key, q)
        shuffled = {k: pool[k][perm] for k in ("lq", "gt")}
        out = {k: shuffled[k][:b] for k in ("lq", "gt")}
        new = {k: shuffled[k].at[:b].set(batch[k]) for k in ("lq", "gt")}
        new["count"] = pool["count"]
        return new, out

    return jax.lax.cond(pool["count"] < q, fill, steady, None)


def is_full(pool) -> jax.Array:
    return pool["count"] >= pool["lq"].shape[0]
