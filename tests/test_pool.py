"""Tests for kdsr_jax.degradation.pool (reference/DEGRADATION.md §2.3)."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdsr_jax.degradation import pool

Q, B = 12, 3
LQ_SHAPE, GT_SHAPE = (2, 2, 3), (4, 4, 3)


def _batch(step):
    """Batch whose pairs carry an id (lq and gt filled with the same id)."""
    ids = np.arange(step * B, (step + 1) * B, dtype=np.float32) + 1
    return {"lq": jnp.asarray(np.broadcast_to(ids[:, None, None, None], (B,) + LQ_SHAPE)),
            "gt": jnp.asarray(np.broadcast_to(ids[:, None, None, None], (B,) + GT_SHAPE))}


def _ids(arr):
    a = np.asarray(arr)
    ids = a.reshape(a.shape[0], -1)
    assert np.all(ids == ids[:, :1]), "pair contents were mixed"
    return ids[:, 0]


_update = jax.jit(pool.update)


def test_fill_phase_returns_the_fresh_batch_and_appends_it():
    state = pool.init(Q, LQ_SHAPE, GT_SHAPE)
    for step in range(Q // B):
        batch = _batch(step)
        state, out = _update(state, batch, jax.random.key(step))
        np.testing.assert_array_equal(np.asarray(out["lq"]), np.asarray(batch["lq"]))
        np.testing.assert_array_equal(np.asarray(out["gt"]), np.asarray(batch["gt"]))
        assert int(state["count"]) == (step + 1) * B
    assert bool(pool.is_full(state))
    np.testing.assert_array_equal(_ids(state["lq"]), np.arange(Q) + 1)
    np.testing.assert_array_equal(_ids(state["gt"]), np.arange(Q) + 1)


def test_steady_state_outputs_come_from_pool_and_multiset_is_conserved():
    state = pool.init(Q, LQ_SHAPE, GT_SHAPE)
    for step in range(Q // B):
        state, _ = _update(state, _batch(step), jax.random.key(step))
    seen_from_pool = 0
    for step in range(Q // B, Q // B + 30):
        batch = _batch(step)
        before = collections.Counter(_ids(state["lq"]).tolist())
        state, out = _update(state, batch, jax.random.key(100 + step))
        out_ids = _ids(out["lq"])
        np.testing.assert_array_equal(out_ids, _ids(out["gt"]))  # pairs stay paired
        np.testing.assert_array_equal(_ids(state["lq"]), _ids(state["gt"]))
        # Every output came from the pool (not the fresh batch), without repetition.
        assert not (collections.Counter(out_ids.tolist()) - before)
        seen_from_pool += len(out_ids)
        # pool_before + batch == pool_after + output (as multisets).
        after = collections.Counter(_ids(state["lq"]).tolist())
        assert before + collections.Counter(_ids(batch["lq"]).tolist()) == \
            after + collections.Counter(out_ids.tolist())
        assert int(state["count"]) == Q
    assert seen_from_pool == 30 * B


def test_steady_state_permutes_randomly():
    state = pool.init(Q, LQ_SHAPE, GT_SHAPE)
    for step in range(Q // B):
        state, _ = _update(state, _batch(step), jax.random.key(step))
    outs = {tuple(_ids(_update(state, _batch(9), jax.random.key(k))[1]["lq"]))
            for k in range(10)}
    assert len(outs) > 5


def test_state_is_a_checkpointable_pytree():
    state = pool.init(Q, LQ_SHAPE, GT_SHAPE)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    assert all(isinstance(x, jax.Array) for x in leaves)
    restored = jax.tree_util.tree_unflatten(treedef, [np.asarray(x) for x in leaves])
    state2, out = _update(restored, _batch(0), jax.random.key(0))
    assert int(state2["count"]) == B and out["lq"].shape == (B,) + LQ_SHAPE


def test_update_traces_once_for_fill_and_steady_phases():
    traces = []

    def fn(state, batch, key):
        traces.append(1)
        return pool.update(state, batch, key)

    f = jax.jit(fn)
    state = pool.init(Q, LQ_SHAPE, GT_SHAPE)
    for step in range(Q // B + 3):
        state, _ = f(state, _batch(step), jax.random.key(step))
    assert len(traces) == 1


def test_queue_size_not_divisible_by_batch_raises_clear_error():
    state = pool.init(10, LQ_SHAPE, GT_SHAPE)
    with pytest.raises(pool.PoolError, match="divisible by the batch size 3"):
        pool.update(state, _batch(0), jax.random.key(0))
    with pytest.raises(ValueError, match="does not match"):
        pool.update(pool.init(Q, (3, 3, 3), GT_SHAPE), _batch(0), jax.random.key(0))
    with pytest.raises(ValueError, match="queue_size must be >= 1"):
        pool.init(0, LQ_SHAPE, GT_SHAPE)


def test_grouped_pools_are_independent_pools_stacked_on_a_leading_axis():
    pools = pool.init(4, (2, 2, 3), (8, 8, 3), groups=3)
    assert pools["lq"].shape == (3, 4, 2, 2, 3) and pools["gt"].shape == (3, 4, 8, 8, 3)
    assert pools["count"].shape == (3,)
    single = pool.init(4, (2, 2, 3), (8, 8, 3))
    for k in ("lq", "gt", "count"):
        np.testing.assert_array_equal(pools[k][1], single[k])
