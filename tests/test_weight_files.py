"""Every weight file a user has: dtypes, safetensors, names, nesting, NaN/inf, and
converted directories whose model.json disagrees with the weights."""

import collections
import json
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.flax
import safetensors.numpy

from kdsr_jax import checkpoints, convert, models
from kdsr_jax.convert import mapping, torch_io

STUDENT = models.preset("tiny", kind="student", n_feats=8, n_blocks=2, n_resblocks=1)
GAN = STUDENT.replace(setting="gan")
BF16 = np.dtype(ml_dtypes.bfloat16)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(classic flat state dict, GAN {'params','params_ema'} object, variables)."""
    variables = models.init_variables(STUDENT, jax.random.PRNGKey(7), (8, 8))
    d = tmp_path_factory.mktemp("w")
    convert.to_torch(STUDENT, variables, d / "classic.pth")
    convert.to_torch(GAN, variables, d / "gan.pth")
    return torch_io.load_pth(d / "classic.pth"), torch_io.load_pth(d / "gan.pth"), variables


def _cast(sd, dtype):
    return collections.OrderedDict((k, np.asarray(v).astype(dtype)) for k, v in sd.items())


def _expected(variables, dtype):
    """What loading a file stored in `dtype` must give: the stored values, in float32."""
    return jax.tree.map(lambda x: np.asarray(np.asarray(x).astype(dtype), np.float32),
                        variables)


def _assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float64, np.float32],
                         ids=["fp16", "bf16", "fp64", "fp32"])
@pytest.mark.parametrize("layout", ["classic", "gan"])
def test_every_float_dtype_loads_as_float32_with_rgb_range_1(official, tmp_path, dtype, layout):
    """`.half()`/bf16/fp64 files used to fail with 'MeanShift constants differ
    (rgb_range=0.999845)'; now they load, cast to float32, with rgb_range exactly 1."""
    classic, gan, variables = official
    obj = (_cast(classic, dtype) if layout == "classic" else
           {k: _cast(v, dtype) for k, v in gan.items()})
    torch_io.save_pth(obj, tmp_path / "w.pth")
    model, loaded = checkpoints.load(str(tmp_path / "w.pth"))
    assert model.spec.rgb_range == 1.0 and model.spec.setting == layout
    assert all(np.asarray(x).dtype == np.float32 for x in jax.tree.leaves(loaded))
    _assert_equal(loaded, _expected(variables, dtype))


def test_torch_half_file_loads(official, tmp_path):
    torch = pytest.importorskip("torch")
    classic, _, variables = official
    torch.save({k: torch.from_numpy(np.array(v)).half() for k, v in classic.items()},
               tmp_path / "half.pth")
    model, loaded = checkpoints.load(str(tmp_path / "half.pth"))
    assert model.spec.rgb_range == 1.0
    _assert_equal(loaded, _expected(variables, np.float16))


def test_wrong_meanshift_is_still_refused_in_half_precision(official, tmp_path):
    """The tolerance follows the stored dtype; it does not wave through other values."""
    sd = _cast(official[0], np.float16)
    sd["G.add_mean.bias"] = sd["G.add_mean.bias"] + np.float16(0.01)
    torch_io.save_pth(sd, tmp_path / "w.pth")
    with pytest.raises(mapping.ConversionError, match="MeanShift.*G.add_mean.bias"):
        checkpoints.load(str(tmp_path / "w.pth"))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["fp32", "fp16", "bf16"])
def test_safetensors_files_load(official, tmp_path, dtype):
    classic, _, variables = official
    path = tmp_path / "KDSRsM.safetensors"
    if dtype == BF16:
        safetensors.flax.save_file({k: jax.numpy.asarray(v, jax.numpy.bfloat16)
                                    for k, v in classic.items()}, str(path))
    else:
        safetensors.numpy.save_file(_cast(classic, dtype), str(path))
    model, loaded = checkpoints.load(str(path))
    assert model.spec.kind == "student" and model.spec.rgb_range == 1.0
    _assert_equal(loaded, _expected(variables, dtype))


@pytest.mark.parametrize("name", ["KDSR.PTH", "model.ckpt", "weights.bin", "noext"])
def test_files_are_recognised_by_content_not_name(official, tmp_path, name):
    torch_io.save_pth(official[0], tmp_path / name)
    assert checkpoints.load(str(tmp_path / name))[0].spec.kind == "student"
    safetensors.numpy.save_file(dict(official[0]), str(tmp_path / ("st-" + name)))
    assert checkpoints.load(str(tmp_path / ("st-" + name)))[0].spec.kind == "student"


def test_a_text_file_named_pth_is_a_one_line_error(tmp_path):
    (tmp_path / "w.pth").write_text("not weights")
    with pytest.raises(ValueError) as info:
        checkpoints.load(str(tmp_path / "w.pth"))
    assert "\n" not in str(info.value) and "by content" in str(info.value)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "net", "lightning", "params_ema+iter"])
def test_nested_state_dicts_are_read(official, tmp_path, wrap):
    classic, _, variables = official
    if wrap == "lightning":   # Lightning: {'state_dict': {'model.G...': ...}, 'epoch': ...}
        obj = {"state_dict": collections.OrderedDict(("model." + k, v)
                                                     for k, v in classic.items()),
               "epoch": 3, "global_step": 10}
    elif wrap == "params_ema+iter":
        obj = {"params_ema": classic, "iter": 5}
    else:
        obj = {wrap: classic, "optimizer": {"lr": 1e-4}, "epoch": 2}
    torch_io.save_pth(obj, tmp_path / "w.pth")
    _, loaded = checkpoints.load(str(tmp_path / "w.pth"))
    _assert_equal(loaded, variables)


def test_unknown_nesting_is_refused_naming_the_key(official, tmp_path):
    torch_io.save_pth({"weights_g": official[0], "epoch": 1}, tmp_path / "w.pth")
    with pytest.raises(mapping.ConversionError) as info:
        checkpoints.load(str(tmp_path / "w.pth"))
    assert "'weights_g'" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_naming_the_key(official, tmp_path, bad):
    sd = _cast(official[0], np.float32)
    sd["G.body.0.body.1.conv1.weight"][0, 0, 0, 0] = bad
    torch_io.save_pth(sd, tmp_path / "w.pth")
    with pytest.raises(mapping.ConversionError, match=r"non-finite.*G\.body\.0\.body\.1\.conv1"):
        checkpoints.load(str(tmp_path / "w.pth"))


def test_non_finite_weights_in_a_converted_dir_are_refused(official, tmp_path):
    variables = jax.tree.map(np.array, official[2])
    variables["params"]["G"]["tail"]["bias"][1] = np.nan
    convert.save_converted(tmp_path / "c", STUDENT, variables)
    with pytest.raises(mapping.ConversionError, match="non-finite.*G/tail/bias"):
        checkpoints.load(str(tmp_path / "c"))


@pytest.mark.parametrize("field, value", [("kind", "teacher"), ("n_feats", 16), ("n_blocks", 3),
                                          ("n_resblocks", 2), ("scale", 2),
                                          ("rgb_range", 255.0)])
def test_edited_model_json_is_refused_naming_the_field(official, tmp_path, field, value):
    convert.save_converted(tmp_path / "c", STUDENT, official[2])
    meta_path = tmp_path / "c" / convert.MODEL_JSON
    meta = json.loads(meta_path.read_text())
    meta["spec"][field] = value
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(mapping.ConversionError) as info:
        checkpoints.load(str(tmp_path / "c"))
    msg = str(info.value)
    assert f"{field}=" in msg and "disagrees with the weights" in msg and "\n" not in msg, msg
    # The untouched copy still loads.
    shutil.rmtree(tmp_path / "c")
    convert.save_converted(tmp_path / "c", STUDENT, official[2])
    assert checkpoints.load(str(tmp_path / "c"))[0].spec == STUDENT
