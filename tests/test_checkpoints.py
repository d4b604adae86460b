"""kdsr_jax.checkpoints.load: training workdirs (EMA first), converted dirs, official .pth."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kdsr_jax import checkpoints, convert, models
from kdsr_jax.train import loop, state as state_lib

SPEC = models.preset("tiny", kind="student", n_feats=8, n_blocks=1, n_resblocks=1)


class _Adam:
    b1, b2, eps = 0.9, 0.999, 1e-8


def _write_workdir(path, ema: bool, step=3):
    params = models.init_variables(SPEC, jax.random.PRNGKey(0), (8, 8))["params"]
    ema_params = jax.tree.map(lambda x: x + 1.0, params) if ema else None
    st = state_lib.create(params=params, tx=state_lib.adam(_Adam), seed=0, ema=ema,
                          ema_params=ema_params)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, loop.MODEL_JSON), "w") as f:
        f.write(SPEC.to_json())
    mgr = loop._checkpoint_manager(str(path), keep=2)
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(st),
                                           data=ocp.args.JsonSave({})))
    mgr.wait_until_finished()
    mgr.close()
    return params, ema_params


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_training_workdir_loads_ema_weights_when_present(tmp_path):
    _, ema_params = _write_workdir(tmp_path, ema=True)
    model, variables = checkpoints.load(str(tmp_path))
    assert model.spec == SPEC
    assert set(variables) == {"params"}
    _assert_same(variables["params"], ema_params)


def test_training_workdir_without_ema_loads_trained_params(tmp_path):
    params, _ = _write_workdir(tmp_path, ema=False)
    model, variables = checkpoints.load(str(tmp_path))
    _assert_same(variables["params"], params)
    lr = np.zeros((1, 8, 8, 3), np.float32)
    assert model.apply(variables, lr).shape == (1, 32, 32, 3)


def test_converted_directory_loads_through_convert(tmp_path):
    variables = models.init_variables(SPEC, jax.random.PRNGKey(1), (8, 8))
    convert.save_converted(tmp_path / "conv", SPEC, variables)
    model, loaded = checkpoints.load(str(tmp_path / "conv"))
    assert model.spec.kind == "student"
    _assert_same(loaded["params"], variables["params"])


def test_official_pth_loads_through_convert(fixtures_dir):
    model, variables = checkpoints.load(str(fixtures_dir / "classic_ta_small_x4.pth"))
    assert model.spec.kind == "teacher" and model.spec.n_feats == 16


@pytest.mark.parametrize("make", ["missing", "empty_dir", "text_file"])
def test_unknown_paths_are_a_clear_one_line_error(tmp_path, make):
    path = tmp_path / "x"
    if make == "empty_dir":
        path.mkdir()
    elif make == "text_file":
        path = tmp_path / "notes.txt"
        path.write_text("hello")
    with pytest.raises(ValueError) as info:
        checkpoints.load(str(path))
    assert "\n" not in str(info.value)


def test_workdir_without_checkpoint_yet_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "model.json").write_text(SPEC.to_json())
    with pytest.raises(ValueError, match="without any checkpoint"):
        checkpoints.load(str(tmp_path))
