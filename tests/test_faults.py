"""Faults during training (issue 17): non-finite updates are never saved, a damaged
newest checkpoint falls back to the newest readable one (trainer and
`checkpoints.load`), a full disk and CLI mistakes end in one line, library chatter is
kept at WARNING."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from kdsr_jax import checkpoints, orbax_steps
from kdsr_jax.train import loop

from test_train_loop import _config, compilation_cache  # noqa: F401 - shared fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.batch_size=2", "--config.patch_size=32", "--config.model.n_feats=8",
        "--config.model.n_blocks=1", "--config.model.n_resblocks=1",
        "--config.eval_every_steps=0", "--config.data.worker_threads=0"]


def _train_cmd(workdir, *extra):
    return [sys.executable, os.path.join(REPO, "scripts", "train.py"), "--config",
            os.path.join(REPO, "configs", "teacher.py") + ":demo", "--workdir", str(workdir),
            *TINY, *extra]


def _run(cmd):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # one CPU device
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": REPO})


def _damage(step_dir, how):
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    biggest = max(files, key=os.path.getsize)
    if how == "truncate":
        with open(biggest, "r+b") as f:
            f.truncate(os.path.getsize(biggest) // 2)
    elif how == "delete":
        os.unlink(biggest)
    else:                                   # emptied step directory
        for f in files:
            os.unlink(f)
        for r, ds, _ in sorted(os.walk(step_dir), reverse=True):
            for d in ds:
                os.rmdir(os.path.join(r, d))


def test_a_huge_learning_rate_never_saves_inf_weights_even_at_total_steps_1(tmp_path):
    config = _config(total_steps=1)
    config.schedule.lr = 1e39          # inf in float32: step 1's update is inf
    with pytest.raises(loop.NonFiniteLossError,
                       match="non-finite parameters after step 1 .*Last good checkpoint: none"):
        loop.train_and_evaluate(config, str(tmp_path / "w"), num_devices=1, progress=False)
    assert not (tmp_path / "w").exists()     # nothing saved: no half-made workdir either


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    """A run with checkpoints at steps 2 and 4; returns (workdir, params at step 2)."""
    root = tmp_path_factory.mktemp("faults")
    wd = str(root / "w")
    loop.train_and_evaluate(_config(total_steps=2), wd, num_devices=1, progress=False)
    step2 = checkpoints.load(wd)[1]["params"]
    loop.train_and_evaluate(_config(total_steps=4), wd, num_devices=1, progress=False)
    return wd, step2


@pytest.mark.parametrize("how", ["truncate", "delete", "empty"])
def test_load_falls_back_to_the_newest_readable_step_with_one_warning(four_steps, tmp_path,
                                                                      how, caplog, capfd):
    import shutil

    src, step2 = four_steps
    wd = str(tmp_path / "copy")
    shutil.copytree(src, wd)
    _damage(os.path.join(wd, "checkpoints", "4"), how)
    capfd.readouterr()
    with caplog.at_level("WARNING"):
        _, variables = checkpoints.load(wd)
    warnings = [r for r in caplog.records if r.name == "kdsr_jax.orbax_steps"]
    assert len(warnings) == 1 and "step 4 is damaged" in warnings[0].getMessage()
    assert "using step 2" in warnings[0].getMessage()
    for a, b in zip(jax_leaves(variables["params"]), jax_leaves(step2)):
        np.testing.assert_array_equal(a, b)
    assert "Traceback" not in capfd.readouterr().err


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_no_readable_step_is_one_line(four_steps, tmp_path):
    import shutil

    wd = str(tmp_path / "copy")
    shutil.copytree(four_steps[0], wd)
    for s in ("2", "4"):
        _damage(os.path.join(wd, "checkpoints", s), "truncate")
    with pytest.raises(orbax_steps.NoReadableCheckpointError,
                       match=r"no readable checkpoint; damaged step\(s\) 4, 2") as e:
        checkpoints.load(wd)
    assert "\n" not in str(e.value)


def test_resume_skips_a_damaged_newest_step_and_keeps_it_aside(four_steps, tmp_path, caplog):
    import shutil

    wd = str(tmp_path / "copy")
    shutil.copytree(four_steps[0], wd)
    _damage(os.path.join(wd, "checkpoints", "4"), "truncate")
    with caplog.at_level("WARNING"):
        state = loop.train_and_evaluate(_config(total_steps=4), wd, num_devices=1,
                                        progress=False)
    assert "step 4 is damaged" in caplog.text
    assert int(state.step) == 4                               # steps 3 and 4 redone
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "4"]
    aside = os.listdir(os.path.join(wd, "checkpoints_damaged"))
    assert len(aside) == 1 and aside[0].startswith("4-")      # kept, out of the way
    straight = checkpoints.load(four_steps[0])[1]["params"]
    for a, b in zip(jax_leaves(checkpoints.load(wd)[1]["params"]), jax_leaves(straight)):
        np.testing.assert_array_equal(a, b)                   # exact resume from step 2


def _with_file_size_limit(limit, cmd):
    """`cmd` run with RLIMIT_FSIZE = `limit` bytes (set in a small exec wrapper, not a
    preexec_fn: forking this multithreaded process is unsafe)."""
    wrapper = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
               "os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", wrapper, *cmd]


def test_a_full_disk_during_a_save_is_one_line(tmp_path):
    """RLIMIT_FSIZE makes every write past 60 kB fail (EFBIG), as a full disk does."""
    proc = _run(_with_file_size_limit(60_000, _train_cmd(tmp_path / "w",
                                                          "--config.total_steps=1")))
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: cannot save checkpoint step 1 in " + str(tmp_path / "w")
                      + ": File too large"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_train_cli_is_quiet_and_its_mistakes_are_one_line(tmp_path):
    ok = _run(_train_cmd(tmp_path / "w", "--config.total_steps=1"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert not re.search(r"^[IW]\d{4} ", ok.stderr, re.M), ok.stderr[:2000]   # no absl INFO
    assert ok.stdout.strip().endswith("at step 1 of 1")

    typo = _run(_train_cmd(tmp_path / "x", "--config.batchsize=4"))
    assert typo.returncode == 1
    assert typo.stderr.strip().splitlines() == [
        "error: unknown config field 'batchsize' in --config.batchsize; did you mean "
        '"batch_size"? (see --help)']

    f = tmp_path / "a_file"
    f.write_text("x")
    for workdir, message in [(f, "is a file, not a directory"), ("", "--workdir is empty")]:
        proc = _run(_train_cmd(workdir, "--config.total_steps=1"))
        assert proc.returncode == 1
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
