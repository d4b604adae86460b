"""The training loop: exact resume, SIGTERM, non-finite loss, workdir contents, CLI."""

import importlib.util
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdsr_jax.train import loop, sharding, steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Identical step programs across the runs of this file compile once."""
    old = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def load_config(name, arg=None):
    """`configs/<name>.py:get_config(arg)` (as config_flags loads it)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _config(total_steps=4, **overrides):
    c = load_config("teacher", "demo")
    c.model.update(dict(n_feats=8, n_blocks=1, n_resblocks=1))
    c.batch_size = 2
    c.patch_size = 32
    c.total_steps = total_steps
    c.checkpoint_every_steps = 2
    c.eval_every_steps = 0
    c.log_every_steps = 1
    c.data.worker_threads = 0
    c.update(overrides)
    return c


def _params(workdir):
    from kdsr_jax import checkpoints

    return jax.device_get(checkpoints.load(workdir)[1]["params"])


def _assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_stop_and_resume_gives_the_same_parameters_as_a_straight_run(tmp_path):
    straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
    loop.train_and_evaluate(_config(), straight, num_devices=1, progress=False)
    loop.train_and_evaluate(_config(), resumed, num_devices=1, max_steps=2, progress=False)
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["2"]
    state = loop.train_and_evaluate(_config(), resumed, num_devices=1, progress=False)
    assert int(state.step) == 4
    _assert_trees_equal(_params(straight), _params(resumed))
    for name in ("model.json", "config.json"):
        assert os.path.isfile(os.path.join(straight, name))
    assert any(f.startswith("events") for f in os.listdir(os.path.join(straight, "tb")))


def test_sigterm_finishes_the_step_saves_and_returns(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = sharding.global_batch

    def batch_then_signal(local, mesh):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(local, mesh)

    monkeypatch.setattr(sharding, "global_batch", batch_then_signal)
    state = loop.train_and_evaluate(_config(total_steps=8), str(tmp_path), num_devices=1,
                                    progress=False)
    # The signal lands while step 3 is prepared; the stop vote of step 3 is read (the
    # same on every process) once step 4 is dispatched, so step 4 is the one saved.
    assert int(state.step) == 4
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


def test_non_finite_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path,
                                                                                monkeypatch):
    real = steps.make_classic_step

    def poisoned(config, model, teacher=None):
        fn = real(config, model, teacher)

        def step(state, batch, frozen):
            new_state, metrics = fn(state, batch, frozen)
            bad = jnp.where(state.step >= 2, jnp.nan, 1.0)   # the 3rd step diverges
            return new_state, {**metrics, "loss": metrics["loss"] * bad}
        return step

    monkeypatch.setattr(steps, "make_classic_step", poisoned)
    with pytest.raises(loop.NonFiniteLossError, match="step 3.*Last good checkpoint: step 2"):
        loop.train_and_evaluate(_config(total_steps=8), str(tmp_path), num_devices=1,
                                progress=False)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def test_train_script_rejects_unknown_config_field(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "train.py"),
         "--config", os.path.join(REPO, "configs", "teacher.py") + ":demo",
         "--workdir", str(tmp_path), "--config.no_such_field=1"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no_such_field" in proc.stderr
