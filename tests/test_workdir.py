"""The training workdir is checked before anything is written (issues 14 and 17):
another model/config, a converted model, foreign files, a run already past
total_steps, a bad path, a second run (lock) and bad config numbers are refused in one
line, and the workdir is left byte-for-byte as it was; a failed start leaves nothing."""

import json
import os
import subprocess
import sys

import jax
import pytest

from kdsr_jax import convert, models
from kdsr_jax.train import loop, validate, workdir as workdir_lib

from test_train_loop import _config, compilation_cache  # noqa: F401 - shared fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(path):
    """{relative path: bytes} of every file under `path`."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = fh.read()
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-step run (checkpoint at step 2)."""
    wd = str(tmp_path_factory.mktemp("run") / "T")
    loop.train_and_evaluate(_config(total_steps=2), wd, num_devices=1, progress=False)
    return wd


@pytest.mark.parametrize("change, named", [
    (dict(model=dict(n_feats=16)), "n_feats (8 -> 16)"),
    (dict(batch_size=4), "batch_size (2 -> 4)"),
    (dict(seed=7), "seed (1 -> 7)"),
])
def test_another_model_or_config_is_refused_and_the_workdir_is_untouched(trained, change,
                                                                          named):
    before = _snapshot(trained)
    config = _config(total_steps=4)
    for k, v in change.items():
        if isinstance(v, dict):
            config[k].update(v)
        else:
            config[k] = v
    with pytest.raises(workdir_lib.WorkdirError) as e:
        loop.train_and_evaluate(config, trained, num_devices=1, progress=False)
    assert named in str(e.value) and "\n" not in str(e.value)
    assert _snapshot(trained) == before


def test_total_steps_below_the_saved_step_says_already_at_step_and_writes_nothing(trained):
    before = _snapshot(trained)
    with pytest.raises(workdir_lib.WorkdirError, match="already at step 2"):
        loop.train_and_evaluate(_config(total_steps=1), trained, num_devices=1, progress=False)
    assert _snapshot(trained) == before


def test_a_converted_model_directory_is_not_a_training_workdir(tmp_path):
    spec = models.preset("tiny", kind="teacher", n_feats=8, n_blocks=1, n_resblocks=1)
    out = tmp_path / "converted"
    convert.save_converted(out, spec, models.init_variables(spec, jax.random.PRNGKey(0)))
    before = _snapshot(out)
    with pytest.raises(workdir_lib.WorkdirError, match="converted model"):
        loop.train_and_evaluate(_config(), str(out), num_devices=1, progress=False)
    assert _snapshot(out) == before
    convert.load_converted(out)     # still loads


def test_a_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(workdir_lib.WorkdirError, match="not a training workdir.*holiday.jpg"):
        loop.train_and_evaluate(_config(), str(tmp_path), num_devices=1, progress=False)
    assert os.listdir(tmp_path) == ["holiday.jpg"]


def test_a_failed_start_leaves_no_half_made_workdir(tmp_path):
    config = _config()
    config.stage = "student"
    config.teacher = str(tmp_path / "no_such_teacher")
    wd = tmp_path / "S"
    with pytest.raises(ValueError, match="no_such_teacher"):
        loop.train_and_evaluate(config, str(wd), num_devices=1, progress=False)
    assert not wd.exists()
    wd.mkdir()       # an empty folder given by the user stays, empty
    with pytest.raises(ValueError, match="no_such_teacher"):
        loop.train_and_evaluate(config, str(wd), num_devices=1, progress=False)
    assert wd.is_dir() and os.listdir(wd) == []


@pytest.mark.parametrize("field, value, message", [
    ("keep_checkpoints", 0, "keep_checkpoints=0: must be an integer >= 1"),
    ("checkpoint_every_steps", 0, "checkpoint_every_steps=0: must be an integer >= 1"),
    ("log_every_steps", 0, "log_every_steps=0: must be an integer >= 1"),
    ("total_steps", -5, "total_steps=-5: must be an integer >= 1"),
    ("eval_every_steps", -1, "eval_every_steps=-1"),
    ("ema_decay", 1.5, "ema_decay=1.5: must be in [0.0, 1.0)"),
    ("model.dtype", "foo", "model.dtype='foo': expected one of"),
    ("schedule.lr", float("nan"), "schedule.lr=nan: must be finite"),
])
def test_bad_config_numbers_are_refused_before_the_workdir_is_created(tmp_path, field, value,
                                                                      message):
    config = _config()
    node, _, leaf = field.rpartition(".")
    (config[node] if node else config)[leaf] = value
    with pytest.raises(ValueError, match="invalid config") as e:
        loop.train_and_evaluate(config, str(tmp_path / "w"), num_devices=1, progress=False)
    assert message in str(e.value)
    assert not (tmp_path / "w").exists()


def test_bad_kd_temperature_of_a_student_is_refused():
    from test_train_loop import load_config

    config = load_config("student", "demo")
    config.kd.temperature = 0.0
    assert any("kd.temperature=0.0: must be > 0.0" in p for p in validate.config_problems(config))


def test_every_shipped_config_passes_the_checks():
    from test_train_loop import load_config

    for name, arg in [("teacher", None), ("teacher", "demo"), ("student", "aniso"),
                      ("gan_teacher", None), ("gan_student", "demo"), ("gan", "v2")]:
        assert validate.config_problems(load_config(name, arg)) == []


def test_workdir_paths_empty_file_and_unwritable(tmp_path, monkeypatch):
    with pytest.raises(workdir_lib.WorkdirError, match="--workdir is empty"):
        workdir_lib.check_path("")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(workdir_lib.WorkdirError, match="is a file, not a directory"):
        workdir_lib.check_path(str(f))
    with pytest.raises(workdir_lib.WorkdirError, match="is a file"):
        workdir_lib.check_path(str(f / "sub"))
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        if os.access(ro, os.W_OK):     # root ignores modes: simulate the OS refusal
            def refuse(*a, **k):
                raise PermissionError(13, "Permission denied")
            monkeypatch.setattr(workdir_lib.tempfile, "mkstemp", refuse)
        with pytest.raises(workdir_lib.WorkdirError, match="cannot write to --workdir.*"
                                                           "Permission denied"):
            loop.train_and_evaluate(_config(), str(ro / "run"), num_devices=1, progress=False)
    finally:
        os.chmod(ro, 0o755)


_HOLD = """
import sys, time
from kdsr_jax.train import workdir
lock = workdir.WorkdirLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_run_on_a_locked_workdir_refuses_naming_the_holder(tmp_path):
    wd = tmp_path / "run"
    wd.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(wd)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": REPO})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(workdir_lib.WorkdirBusyError,
                           match=rf"in use by another training run \(pid {holder.pid} on "):
            loop.train_and_evaluate(_config(), str(wd), num_devices=1, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert os.listdir(wd) == [".lock"]    # the killed holder's lock file stays behind


def test_a_stale_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(f"pid {dead.pid} on host since 2026-01-01T00:00:00\n")
    lock = workdir_lib.WorkdirLock(str(tmp_path))
    with caplog.at_level("WARNING"):
        lock.acquire()
    try:
        assert f"pid {dead.pid}" in caplog.text and "no longer running" in caplog.text
        assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} ")
        with pytest.raises(workdir_lib.WorkdirBusyError, match=f"pid {os.getpid()}"):
            workdir_lib.WorkdirLock(str(tmp_path)).acquire()
    finally:
        lock.release()
    assert not (tmp_path / ".lock").exists()


def test_a_resumed_run_may_change_cadence_and_length(tmp_path):
    wd = str(tmp_path / "r")
    loop.train_and_evaluate(_config(total_steps=2), wd, num_devices=1, progress=False)
    state = loop.train_and_evaluate(_config(total_steps=3, log_every_steps=3), wd,
                                    num_devices=1, progress=False)
    assert int(state.step) == 3
    saved = json.loads(open(os.path.join(wd, "config.json")).read())
    assert saved["total_steps"] == 3 and saved["log_every_steps"] == 3
    assert not os.path.exists(os.path.join(wd, ".lock"))


def test_tensorboard_reads_the_runs_event_files(trained):
    """The README's `tensorboard --logdir` works: TensorBoard's own reader (the
    `[tensorboard]` extra) finds the training scalars of a run."""
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(os.path.join(trained, "tb"))
    acc.Reload()
    assert {"train/loss", "train/lr"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
