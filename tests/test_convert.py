"""The official-checkpoint converter (kdsr_jax.convert): spec inference for every file
kind, strict key/shape/MeanShift validation, exact round trips through .pth and orbax,
and torch's own loader accepting what we export (reference/ARCHITECTURE.md §7-§8)."""

import collections
import json

import jax
import numpy as np
import pytest

from kdsr_jax import convert
from kdsr_jax.convert import mapping, torch_io

# fixture -> (kind, setting, n_feats, n_blocks, n_resblocks, scale) (fixtures README §A)
SR_SPECS = {
    "classic_ta_small_x4": ("teacher", "classic", 16, 3, 2, 4),
    "classic_ta_small_x2": ("teacher", "classic", 16, 3, 2, 2),
    "classic_st_small_x4": ("student", "classic", 16, 3, 2, 4),
    "classic_st_small_x2": ("student", "classic", 16, 3, 2, 2),
    "gan_ta_small_x4": ("teacher", "gan", 16, 3, 2, 4),
    "gan_st_small_x4": ("student", "gan", 16, 3, 2, 4),
    "gan_st_small_x2": ("student", "gan", 16, 3, 2, 2),
}
ALL_FIXTURES = sorted(SR_SPECS) + ["gan_d_small"]


def leaves_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def classic_sd(fixtures_dir, name="classic_st_small_x4"):
    return collections.OrderedDict(torch_io.load_pth(fixtures_dir / f"{name}.pth"))


@pytest.mark.parametrize("name", sorted(SR_SPECS))
def test_from_torch_infers_kind_setting_and_sizes(fixtures_dir, name):
    model, variables = convert.from_torch(fixtures_dir / f"{name}.pth")
    s = model.spec
    assert (s.kind, s.setting, s.n_feats, s.n_blocks, s.n_resblocks, s.scale) == SR_SPECS[name]
    assert s.rgb_range == 1.0 and convert.spec_of(model) == s
    assert set(variables) == {"params"} and set(variables["params"]) == {"G", "E"}


def test_from_torch_reads_discriminator_with_spectral_state(fixtures_dir):
    model, variables = convert.from_torch(fixtures_dir / "gan_d_small.pth")
    assert model.spec.kind == "discriminator" and model.spec.d_num_feat == 16
    sd = torch_io.load_pth(fixtures_dir / "gan_d_small.pth")["params"]
    np.testing.assert_array_equal(np.asarray(variables["spectral"]["conv3"]["u"]),
                                  sd["conv3.weight_u"])
    np.testing.assert_array_equal(np.asarray(variables["spectral"]["conv3"]["v"]),
                                  sd["conv3.weight_v"])


def read_with_torch_or_numpy(path):
    """torch.load(weights_only=True) when torch is installed (the real consumer of our
    exports), else our own reader; tensors as numpy arrays either way."""
    try:
        import torch
    except ImportError:  # torch is a test-only extra
        return torch_io.load_pth(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    conv = lambda d: collections.OrderedDict((k, v.numpy()) for k, v in d.items())  # noqa: E731
    return conv(obj) if "params" not in obj else {k: conv(v) for k, v in obj.items()}


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_import_export_import_is_exact_and_export_equals_official_file(fixtures_dir, name,
                                                                       tmp_path):
    src = fixtures_dir / f"{name}.pth"
    model, variables = convert.from_torch(src)
    out = tmp_path / "export.pth"
    convert.to_torch(model.spec, variables, out)
    model2, variables2 = convert.from_torch(out)
    assert model2.spec == model.spec
    assert leaves_equal(variables, variables2)
    # the official layout: same keys (and order), shapes, float32 values as the fixture
    ref, got = read_with_torch_or_numpy(src), read_with_torch_or_numpy(out)
    if name.startswith("classic"):
        pairs = [(got, ref)]
    elif name == "gan_d_small":
        assert set(got) == {"params"}
        pairs = [(got["params"], ref["params"])]
    else:   # both keys hold the weights the official code runs with (params_ema)
        assert set(got) == {"params", "params_ema"}
        pairs = [(got["params"], ref["params_ema"]), (got["params_ema"], ref["params_ema"])]
    for g, r in pairs:
        assert list(g) == list(r)
        for k in r:
            assert g[k].dtype == np.float32 and g[k].shape == r[k].shape, k
            assert np.array_equal(g[k], r[k]), k


def test_exported_discriminator_loads_strictly_into_torch_spectral_norm_convs(fixtures_dir,
                                                                               tmp_path):
    """torch's spectral_norm load hook needs the SN version in `_metadata`."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model, variables = convert.from_torch(fixtures_dir / "gan_d_small.pth")
    convert.to_torch(model.spec, variables, tmp_path / "d.pth")
    nf = model.spec.d_num_feat
    layers = {"conv0": nn.Conv2d(3, nf, 3, 1, 1)}
    for i, (cin, cout, k, s) in enumerate(
            [(nf, 2 * nf, 4, 2), (2 * nf, 4 * nf, 4, 2), (4 * nf, 8 * nf, 4, 2),
             (8 * nf, 4 * nf, 3, 1), (4 * nf, 2 * nf, 3, 1), (2 * nf, nf, 3, 1),
             (nf, nf, 3, 1), (nf, nf, 3, 1)], start=1):
        layers[f"conv{i}"] = nn.utils.spectral_norm(nn.Conv2d(cin, cout, k, s, 1, bias=False))
    layers["conv9"] = nn.Conv2d(nf, 1, 3, 1, 1)
    net = nn.ModuleDict(layers)
    net.load_state_dict(torch.load(tmp_path / "d.pth", weights_only=True)["params"], strict=True)
    np.testing.assert_array_equal(net["conv5"].weight_u.numpy(),
                                  np.asarray(variables["spectral"]["conv5"]["u"]))


def test_save_and_load_converted_round_trip_is_exact(fixtures_dir, tmp_path):
    model, variables = convert.from_torch(fixtures_dir / "gan_d_small.pth")
    convert.save_converted(tmp_path / "d", model.spec, variables)
    meta = json.loads((tmp_path / "d" / convert.MODEL_JSON).read_text())
    assert meta["spec"] == model.spec.to_dict()
    model2, variables2 = convert.load_converted(tmp_path / "d")
    assert model2.spec == model.spec and leaves_equal(variables, variables2)
    with pytest.raises(ValueError, match="already exists"):
        convert.save_converted(tmp_path / "d", model.spec, variables)
    with pytest.raises(ValueError, match="not a converted model directory"):
        convert.load_converted(tmp_path / "missing")


def test_module_prefix_is_stripped(fixtures_dir):
    sd = classic_sd(fixtures_dir)
    spec, variables = mapping.from_state_dict(sd)
    spec2, variables2 = mapping.from_state_dict(
        collections.OrderedDict((f"module.{k}", v) for k, v in sd.items()))
    assert spec2 == spec and leaves_equal(variables, variables2)


def _error(obj) -> str:
    with pytest.raises(mapping.ConversionError) as info:
        mapping.from_state_dict(obj)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_missing_key_is_named_in_one_line_error(fixtures_dir):
    sd = classic_sd(fixtures_dir)
    del sd["G.body.0.body.1.conv1.bias"]
    assert "missing keys: G.body.0.body.1.conv1.bias" in _error(sd)


def test_unexpected_and_renamed_keys_are_named(fixtures_dir):
    sd = classic_sd(fixtures_dir)
    sd["G.extra.weight"] = np.zeros(3, np.float32)
    assert "unexpected keys: G.extra.weight" in _error(sd)
    sd = classic_sd(fixtures_dir)
    sd["E_st.mlp.0.weights"] = sd.pop("E_st.mlp.0.weight")
    msg = _error(sd)
    assert "missing keys: E_st.mlp.0.weight" in msg and "E_st.mlp.0.weights" in msg


def test_mis_shaped_key_is_named_with_both_shapes(fixtures_dir):
    sd = classic_sd(fixtures_dir)
    sd["G.body.1.weight"] = sd["G.body.1.weight"][:, :8]
    assert "G.body.1.weight (16, 8, 3, 3) != (16, 16, 3, 3)" in _error(sd)


def test_wrong_meanshift_constants_are_rejected(fixtures_dir):
    sd = classic_sd(fixtures_dir)
    sd["G.add_mean.bias"] = sd["G.add_mean.bias"] + np.float32(0.01)
    assert "MeanShift" in _error(sd) and "G.add_mean.bias" in _error(sd)


def test_teacher_and_student_encoders_together_are_ambiguous(fixtures_dir):
    sd = classic_sd(fixtures_dir)
    sd.update({k.replace("E_st.", "E.", 1): v for k, v in sd.items() if k.startswith("E_st.")})
    assert "ambiguous" in _error(sd)


def test_non_kdsr_state_dicts_are_rejected():
    assert "not a KDSR checkpoint" in _error({"fc.weight": np.zeros((2, 2), np.float32)})
    assert "unsupported checkpoint layout" in _error({"state_dict": {"a": 1}, "epoch": 3})


def test_from_torch_reports_unreadable_file_as_checkpoint_error(tmp_path, fixtures_dir):
    bad = tmp_path / "truncated.pth"
    bad.write_bytes((fixtures_dir / "classic_st_small_x2.pth").read_bytes()[:5000])
    with pytest.raises(torch_io.CheckpointError):
        convert.from_torch(bad)


@pytest.mark.parametrize("kind,setting,scale", [("teacher", "classic", 3), ("student", "gan", 3),
                                                ("student", "classic", 2)])
def test_fresh_tiny_models_round_trip_and_infer_spec_at_every_scale(kind, setting, scale,
                                                                    tmp_path):
    from kdsr_jax.models import init_variables, preset
    spec = preset("tiny", kind=kind, scale=scale, setting=setting, n_blocks=2, n_resblocks=1)
    variables = init_variables(spec, jax.random.key(0), lr_hw=(4, 4))
    convert.to_torch(spec, variables, tmp_path / "m.pth")
    model, back = convert.from_torch(tmp_path / "m.pth")
    assert model.spec == spec and leaves_equal(variables, back)
    sd = mapping.unwrap(torch_io.load_pth(tmp_path / "m.pth"))[0]
    enc = "E" if kind == "teacher" else "E_st"
    assert sd[f"{enc}.E.0.weight"].shape[1] == (3 + 3 * scale * scale if kind == "teacher" else 3)
    assert sd["G.tail.0.0.weight"].shape[0] == (9 if scale == 3 else 4) * 16
