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
    real = steps.make_step

    def poisoned(config, model, teacher=None, discriminator=None):
        fn = real(config, model, teacher, discriminator)

        def step(state, batch, frozen):
            new_state, metrics = fn(state, batch, frozen)
            bad = jnp.where(state.step >= 2, jnp.nan, 1.0)   # the 3rd step diverges
            return new_state, {**metrics, "loss": metrics["loss"] * bad}
        return step

    monkeypatch.setattr(steps, "make_step", poisoned)
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


# ----------------------------------------------------------------- launch environment

def _clear_launch_env(monkeypatch):
    for k in (*sharding._LAUNCH_ENV, sharding.ENV_LOCAL_DEVICE_IDS, *sharding._SLURM_TASK_ENV,
              "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(k, raising=False)


def test_env_launch_reads_the_three_jax_variables_and_names_a_missing_or_bad_one():
    full = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": "1"}
    assert sharding.env_launch({}) is None
    assert sharding.env_launch(full) == dict(coordinator_address="10.0.0.1:1234",
                                             num_processes=2, process_id=1)
    assert sharding.env_launch({**full, "JAX_LOCAL_DEVICE_IDS": "0,1"})["local_device_ids"] == [0, 1]
    assert sharding.env_launch({**full, "JAX_COORDINATOR_ADDRESS": "[::1]:80"})
    bad = {
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID": {"JAX_COORDINATOR_ADDRESS": "h:1"},
        "not JAX_COORDINATOR_ADDRESS": {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
        "JAX_COORDINATOR_ADDRESS='h' is not HOST:PORT": {**full, "JAX_COORDINATOR_ADDRESS": "h"},
        "JAX_COORDINATOR_ADDRESS='h:99999'": {**full, "JAX_COORDINATOR_ADDRESS": "h:99999"},
        "JAX_NUM_PROCESSES='two'": {**full, "JAX_NUM_PROCESSES": "two"},
        r"JAX_PROCESS_ID='2' is not an integer in \[0, 1\]": {**full, "JAX_PROCESS_ID": "2"},
        "JAX_LOCAL_DEVICE_IDS='a'": {**full, "JAX_LOCAL_DEVICE_IDS": "a"},
    }
    for message, env in bad.items():
        with pytest.raises(sharding.LaunchError, match=message):
            sharding.env_launch(env)


def test_partial_slurm_environment_trains_as_one_process_and_says_to_use_srun(monkeypatch,
                                                                              caplog):
    """salloc / ssh into an allocation: SLURM_JOB_ID + SLURM_NTASKS only (issue 16)."""
    _clear_launch_env(monkeypatch)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    with caplog.at_level("WARNING", logger="kdsr_jax.train.sharding"):
        assert sharding.maybe_initialize_distributed() is False
    assert calls == []
    (message,) = [r.getMessage() for r in caplog.records]
    assert "SLURM_JOB_ID, SLURM_NTASKS" in message and "SLURM_PROCID" in message
    assert "training as one process" in message and "srun --ntasks=4" in message
    # Under srun (every task variable set) JAX's own SLURM detection takes over.
    for k, v in dict(SLURM_STEP_NODELIST="node[001-002]", SLURM_PROCID="1",
                     SLURM_LOCALID="0").items():
        monkeypatch.setenv(k, v)
    assert sharding.maybe_initialize_distributed(heartbeat_timeout_s=30) is True
    assert calls == [{"heartbeat_timeout_seconds": 30}]


def test_jax_environment_launch_is_passed_to_initialize(monkeypatch):
    _clear_launch_env(monkeypatch)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    assert sharding.maybe_initialize_distributed() is True
    assert calls == [dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=0,
                          heartbeat_timeout_seconds=sharding.DEFAULT_HEARTBEAT_TIMEOUT_S)]
    _clear_launch_env(monkeypatch)
    assert sharding.maybe_initialize_distributed() is False   # plain single process
    assert len(calls) == 1


def test_train_script_names_the_missing_jax_variable_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234",
           "JAX_PROCESS_ID": "0"}
    env.pop("JAX_NUM_PROCESSES", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "train.py"),
         "--config", os.path.join(REPO, "configs", "teacher.py") + ":demo",
         "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID set but not "
                      "JAX_NUM_PROCESSES: a multi-process launch needs all three (or none)"]
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------- memory, loader, sharding

def test_a_step_that_does_not_fit_in_memory_is_one_line_with_remedies(tmp_path, monkeypatch):
    def oom_step(step_fn, mesh, state=None, **kw):
        def step(*args):
            raise jax.errors.JaxRuntimeError(
                "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 47.11GiB.\n"
                "BufferAssignment OOM Debugging.\n" + "buffer dump line\n" * 50)
        return step

    monkeypatch.setattr(sharding, "jit_step", oom_step)
    with pytest.raises(loop.StepMemoryError) as err:
        loop.train_and_evaluate(_config(), str(tmp_path), num_devices=1, progress=False)
    message = str(err.value)
    assert "\n" not in message and "buffer dump" not in message
    assert "does not fit in device memory" in message and "47.11GiB" in message
    for remedy in ("more devices", "--config.model.remat=True", "smaller --config.batch_size"):
        assert remedy in message


def test_resume_with_other_worker_processes_gives_the_uninterrupted_parameters(tmp_path):
    """Issue 16: started with data.worker_processes=2, resumed with threads only."""
    straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
    loop.train_and_evaluate(_config(), straight, num_devices=1, progress=False)
    with_processes = _config()
    with_processes.data.worker_processes = 2
    loop.train_and_evaluate(with_processes, resumed, num_devices=1, max_steps=2, progress=False)
    state = loop.train_and_evaluate(_config(), resumed, num_devices=1, progress=False)
    assert int(state.step) == 4
    _assert_trees_equal(_params(straight), _params(resumed))


def test_training_pair_pool_is_split_over_devices_like_the_batch():
    from jax.sharding import PartitionSpec

    from kdsr_jax.train import state as state_lib

    mesh = sharding.make_mesh(2)
    pool = {"lq": np.zeros((8, 4, 4, 3), np.float32), "gt": np.zeros((8, 16, 16, 3), np.float32),
            "count": np.zeros((), np.int32)}
    fresh = state_lib.create(params={"G": {"w": np.ones(3, np.float32)}},
                             tx=state_lib.adam(_config().optimizer), seed=0, ema=True, pool=pool)
    placed = sharding.place_state(fresh, mesh)
    assert placed.pool["lq"].sharding.spec == PartitionSpec(sharding.DATA_AXIS)
    assert placed.pool["gt"].addressable_shards[0].data.shape == (4, 16, 16, 3)
    assert placed.pool["count"].sharding.spec == PartitionSpec()
    assert placed.params["G"]["w"].sharding.spec == PartitionSpec()


def _stage_config(stage, tmp_path):
    """Tiny `stage` config: 2-row batches; GAN stages with one 2-pair pool per image."""
    from kdsr_jax import convert, models

    sizes = dict(n_feats=8, n_blocks=1, n_resblocks=1)
    c = load_config(stage, "demo")
    c.model.update(dict(preset="tiny", **sizes))
    c.batch_size = 2
    c.data.worker_threads = 0
    setting = "classic"
    if stage.startswith("gan"):
        setting = "gan"
        c.degradation.gt_size = 64
        c.degradation.group_size = 1      # one draw and one pool per image
        c.degradation.queue_size = 2      # per group: filled after 2 steps
        c.patch_size = 160
    else:
        c.patch_size = 32
    if "teacher" in c and stage not in ("teacher", "gan_teacher"):
        spec = models.preset("tiny", kind="teacher", setting=setting, **sizes)
        convert.save_converted(tmp_path / "teacher", spec,
                               models.init_variables(spec, jax.random.PRNGKey(3)))
        c.teacher = str(tmp_path / "teacher")
    return c


@pytest.mark.parametrize("stage", ["student", "gan_teacher"])
def test_stage_on_two_devices_ends_like_one_device(stage, tmp_path):
    """Same global batch, same draws: 1 x 2 devices = 1 x 1 device (pool split over the
    devices for the GAN stage; 3 steps = pool filled, then one permuted draw)."""
    from jax.sharding import PartitionSpec

    from kdsr_jax.data import pipeline

    config = _stage_config(stage, tmp_path)
    spec = loop.model_spec(config)
    it = pipeline.create_train_iterator(config.data, batch_size=2, patch_size=config.patch_size,
                                        augment=config.augment, seed=config.seed)
    batches = [next(it) for _ in range(3)]
    it.close()
    ends = []
    for n in (1, 2):
        mesh = sharding.make_mesh(n)
        step_fn, fresh, frozen = loop.build(config, spec, jax.random.PRNGKey(0))
        initial = jax.device_get(fresh.params)
        fn = sharding.jit_step(step_fn, mesh, fresh)
        state, frozen = sharding.place_state(fresh, mesh), sharding.replicate(frozen, mesh)
        for batch in batches:
            state, _ = fn(state, sharding.global_batch(batch, mesh), frozen)
        if state.pool:
            assert state.pool["gt"].sharding.spec == PartitionSpec(sharding.DATA_AXIS)
        ends.append(jax.device_get(state))
    one, two = ends
    for a, b in zip(jax.tree.leaves((one.params, one.ema_params, one.pool)),
                    jax.tree.leaves((two.params, two.ema_params, two.pool))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                zip(jax.tree.leaves(one.params), jax.tree.leaves(initial)))
    assert moved > 1e-4


def test_jax_variables_may_override_part_of_a_detected_cluster(monkeypatch):
    """Under srun, JAX_COORDINATOR_ADDRESS alone is a valid override (JAX fills the rest
    from SLURM); outside a cluster the same single variable is an error."""
    _clear_launch_env(monkeypatch)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "node001:4321")
    with pytest.raises(sharding.LaunchError, match="not JAX_NUM_PROCESSES, JAX_PROCESS_ID"):
        sharding.maybe_initialize_distributed()
    for k, v in dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="node001", SLURM_NTASKS="2",
                     SLURM_PROCID="0", SLURM_LOCALID="0").items():
        monkeypatch.setenv(k, v)
    assert sharding.maybe_initialize_distributed() is True
    assert calls == [dict(coordinator_address="node001:4321",
                          heartbeat_timeout_seconds=sharding.DEFAULT_HEARTBEAT_TIMEOUT_S)]


def test_remat_trains_to_the_same_parameters(tmp_path):
    """--config.model.remat=True recomputes activations in the backward pass: after two
    steps the parameters equal a run without it (up to XLA's summation order)."""
    ends = []
    for remat in (False, True):
        config = _config(total_steps=2)
        config.model.remat = remat
        loop.train_and_evaluate(config, str(tmp_path / f"r{remat}"), num_devices=1,
                                progress=False)
        ends.append(_params(tmp_path / f"r{remat}"))
    for a, b in zip(jax.tree.leaves(ends[0]), jax.tree.leaves(ends[1])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
