"""Unit tests of the Flax KDSR modules: pixel (un)shuffle order, dynamic conv
formulations, bilinear x2, parameter counts of the presets (the official torch totals),
the model interface of the team contract, bf16 compute and activation rematerialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdsr_jax.models import (MEANSHIFT_TORCH_PARAMS, ModelSpec, abstract_variables,
                             build_model, count_params,
                             init_variables, preset, torch_param_count)
from kdsr_jax.models import dynconv
from kdsr_jax.models.layers import pixel_shuffle, pixel_unshuffle, upsample2x_bilinear

# Official torch totals, `sum(p.numel())` of the official modules (incl. the 24 MeanShift
# values).
TORCH_TOTALS = {
    ("KDSRs-M", "teacher", 4): 5_822_747,
    ("KDSRs-M", "student", 4): 5_795_099,
    ("KDSRs-L", "teacher", 4): 14_246_299,
    ("KDSRs-L", "student", 4): 14_191_003,
    ("KDSR-GAN", "teacher", 4): 18_901_403,
    ("KDSR-GAN", "student", 4): 18_846_107,
    ("KDSRs-M", "student", 2): 5_647_387,
    ("KDSRs-M", "student", 3): 5_832_027,
}
GENERATOR_M = 4_463_963   # official G (`KDSR`) of KDSRs-M (incl. MeanShift)
ENCODER_M = {"teacher": 1_358_784, "student": 1_331_136}
DISCRIMINATOR_64 = 4_376_897


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- pixel (un)shuffle


def test_pixel_unshuffle_uses_pytorch_channel_order():
    """ARCHITECTURE §1.5: out[c*r*r + i*r + j] at (y, x) = in[c] at (y*r+i, x*r+j)."""
    r, c = 2, 2
    x = rng().standard_normal((1, 4, 6, c)).astype(np.float32)
    out = np.asarray(pixel_unshuffle(jnp.asarray(x), r))
    assert out.shape == (1, 2, 3, c * r * r)
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                np.testing.assert_array_equal(out[0, :, :, ch * r * r + i * r + j],
                                              x[0, i::r, j::r, ch])


@pytest.mark.parametrize("r", [2, 3, 4])
def test_pixel_shuffle_is_the_exact_inverse_of_unshuffle(r):
    x = rng(r).standard_normal((2, 3 * r, 2 * r, 5)).astype(np.float32)
    y = pixel_unshuffle(jnp.asarray(x), r)
    np.testing.assert_array_equal(np.asarray(pixel_shuffle(y, r)), x)


def test_pixel_shuffle_matches_torch():
    torch = pytest.importorskip("torch")
    x = rng(1).standard_normal((2, 3, 4, 5 * 9)).astype(np.float32)
    ref = torch.nn.functional.pixel_shuffle(torch.from_numpy(x.transpose(0, 3, 1, 2)), 3)
    np.testing.assert_array_equal(np.asarray(pixel_shuffle(jnp.asarray(x), 3)),
                                  ref.numpy().transpose(0, 2, 3, 1))


# ---------------------------------------------------------------- dynamic conv


def dynconv_loop(x, k):
    """Explicit definition (ARCHITECTURE §2.1): zero pad 1, cross-correlation."""
    b, h, w, c = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, c))
    for bi in range(b):
        for ci in range(c):
            for y in range(h):
                for xx in range(w):
                    out[bi, y, xx, ci] = np.sum(xp[bi, y:y + 3, xx:xx + 3, ci] * k[bi, :, :, ci])
    return out


@pytest.mark.parametrize("impl", dynconv.IMPLS)
def test_every_dynconv_formulation_matches_explicit_loop(impl):
    x = rng(2).standard_normal((2, 5, 7, 3)).astype(np.float32)
    k = rng(3).standard_normal((2, 3, 3, 3)).astype(np.float32)
    out = jax.jit(lambda a, b: dynconv.dynamic_depthwise_conv(a, b, impl=impl))(x, k)
    np.testing.assert_allclose(np.asarray(out), dynconv_loop(x, k), rtol=2e-6, atol=2e-6)


def test_dynconv_formulations_agree_in_value_and_gradient():
    x = jnp.asarray(rng(4).standard_normal((3, 6, 4, 8)), jnp.float32)
    k = jnp.asarray(rng(5).standard_normal((3, 3, 3, 8)), jnp.float32)
    results = {}
    for impl in ("shift", "grouped"):
        f = lambda a, b, impl=impl: jnp.sum(jnp.sin(dynconv.dynamic_depthwise_conv(a, b, impl)))  # noqa: E731
        results[impl] = (f(x, k), *jax.grad(f, argnums=(0, 1))(x, k))
    for a, b in zip(results["shift"], results["grouped"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_dynconv_rejects_unknown_impl_and_bad_shapes():
    x, k = jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 3, 3, 2))
    with pytest.raises(ValueError, match="impl"):
        dynconv.dynamic_depthwise_conv(x, k, impl="fft")
    with pytest.raises(ValueError, match="kernels"):
        dynconv.dynamic_depthwise_conv(x, jnp.zeros((1, 3, 3, 5)))
    assert dynconv.resolve_impl("auto") in ("shift", "grouped")


# ---------------------------------------------------------------- bilinear x2


def bilinear_up2_reference(x):
    """Direct transcription of torch's align_corners=False index rule, per axis."""
    def axis(a, ax):
        n = a.shape[ax]
        src = np.maximum((np.arange(2 * n) + 0.5) / 2 - 0.5, 0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n - 1)
        lam = src - i0
        shape = [1] * a.ndim
        shape[ax] = 2 * n
        return (np.take(a, i0, ax) * (1 - lam).reshape(shape)
                + np.take(a, i1, ax) * lam.reshape(shape))
    return axis(axis(x.astype(np.float64), 2), 1)


def test_bilinear_up2_matches_torch_align_corners_false_rule():
    x = rng(6).standard_normal((2, 5, 3, 4)).astype(np.float32)
    out = np.asarray(upsample2x_bilinear(jnp.asarray(x)))
    assert out.shape == (2, 10, 6, 4)
    np.testing.assert_allclose(out, bilinear_up2_reference(x), rtol=0, atol=1e-6)
    torch = pytest.importorskip("torch")
    ref = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                                          scale_factor=2, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(out, ref.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name,kind,scale", sorted(TORCH_TOTALS))
def test_preset_parameter_count_equals_reference_table(name, kind, scale):
    """Ours = torch total - 24 MeanShift constants (reference §6), via eval_shape."""
    assert torch_param_count(preset(name, kind=kind, scale=scale)) == TORCH_TOTALS[(name, kind, scale)]


def test_kdsrs_m_generator_and_encoder_counts_match_component_table():
    for kind in ("teacher", "student"):
        shapes = abstract_variables(preset("KDSRs-M", kind=kind))
        assert count_params(shapes["params"]["G"]) + MEANSHIFT_TORCH_PARAMS == GENERATOR_M
        assert count_params(shapes["params"]["E"]) == ENCODER_M[kind]


def test_discriminator_parameter_count_equals_reference_and_has_spectral_state():
    spec = ModelSpec(kind="discriminator", setting="gan")
    shapes = abstract_variables(spec)
    assert count_params(shapes) == DISCRIMINATOR_64
    # torch orientation: weight_u (out,), weight_v (in * kh * kw,) (reference §7.4)
    assert shapes["spectral"]["conv1"]["u"].shape == (128,)
    assert shapes["spectral"]["conv1"]["v"].shape == (64 * 4 * 4,)
    assert set(shapes["spectral"]) == {f"conv{i}" for i in range(1, 9)}


# ---------------------------------------------------------------- interface


@pytest.fixture(scope="module")
def tiny_student():
    spec = preset("tiny", kind="student", scale=4)
    return build_model(spec), init_variables(spec, jax.random.key(1), lr_hw=(8, 8))


def test_student_interface_returns_sr_features_and_encoding(tiny_student):
    model, v = tiny_student
    lr = jax.random.uniform(jax.random.key(2), (2, 8, 12, 3))
    assert model.spec.kind == "student"
    assert set(v) == {"params"} and set(v["params"]) == {"G", "E"}
    sr, (sr2, feats), (idr, fea) = jax.jit(lambda v, lr: (
        model.apply(v, lr), model.apply(v, lr, return_features=True),
        model.apply(v, lr, method="encode")))(v, lr)
    assert sr.shape == (2, 32, 48, 3) and sr.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(sr), np.asarray(sr2))
    assert feats["idr"].shape == (2, 16) and feats["fea"].shape == (2, 64)
    np.testing.assert_allclose(np.asarray(idr), np.asarray(feats["idr"]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(fea), np.asarray(feats["fea"]), atol=1e-6)


def test_generate_on_encoded_idr_equals_full_forward_for_student_and_teacher(tiny_student):
    model, v = tiny_student
    lr = jax.random.uniform(jax.random.key(11), (1, 8, 8, 3))
    sr, sr_g = jax.jit(lambda v, lr: (model.apply(v, lr), model.apply(
        v, lr, model.apply(v, lr, method="encode")[0], method="generate")))(v, lr)
    np.testing.assert_allclose(np.asarray(sr_g), np.asarray(sr), atol=1e-6)
    assert sr_g.dtype == jnp.float32

    spec = preset("tiny", kind="teacher", scale=2)
    teacher = build_model(spec)
    vt = init_variables(spec, jax.random.key(12), lr_hw=(4, 4))
    hr = jax.random.uniform(jax.random.key(13), (1, 16, 16, 3))
    sr, sr_g = jax.jit(lambda v, lr, hr: (teacher.apply(v, lr, hr), teacher.apply(
        v, lr, teacher.apply(v, lr, hr, method="encode")[0], method="generate")))(vt, lr, hr)
    np.testing.assert_allclose(np.asarray(sr_g), np.asarray(sr), atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_teacher_unshuffles_hr_at_every_scale_and_sees_it(scale):
    spec = preset("tiny", kind="teacher", scale=scale, setting="gan")
    model = build_model(spec)
    v = init_variables(spec, jax.random.key(3), lr_hw=(4, 4))
    assert v["params"]["E"]["stem"]["kernel"].shape == (3, 3, 3 + 3 * scale * scale, 16)
    lr = jax.random.uniform(jax.random.key(4), (1, 4, 6, 3))
    hr = jax.random.uniform(jax.random.key(5), (1, 4 * scale, 6 * scale, 3))
    (sr, feats), (idr, _), (idr_other, _) = jax.jit(lambda v, lr, hr: (
        model.apply(v, lr, hr, return_features=True),
        model.apply(v, lr, hr, method="encode"),
        model.apply(v, lr, 1.0 - hr, method="encode")))(v, lr, hr)
    assert sr.shape == hr.shape
    np.testing.assert_allclose(np.asarray(idr), np.asarray(feats["idr"]), atol=1e-6)
    assert not np.allclose(np.asarray(idr), np.asarray(idr_other))
    with pytest.raises(ValueError, match="hr"):
        model.apply(v, lr, hr[:, :-1], method="encode")


def test_bfloat16_compute_keeps_float32_params_and_approximates_float32(tiny_student):
    model, v = tiny_student
    lr = jax.random.uniform(jax.random.key(6), (1, 8, 8, 3))
    bf = build_model(model.spec, dtype=jnp.bfloat16)
    assert jax.tree_util.tree_structure(
        jax.eval_shape(lambda k: bf.init(k, lr), jax.random.key(0))) == \
        jax.tree_util.tree_structure(v)
    out32, out16 = jax.jit(lambda v, lr: (model.apply(v, lr), bf.apply(v, lr)))(v, lr)
    assert out16.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(v))
    err = float(jnp.max(jnp.abs(out32 - out16)))
    assert 0 < err < 0.05


def test_discriminator_train_mode_updates_spectral_state_and_eval_does_not():
    spec = ModelSpec(kind="discriminator", setting="gan", d_num_feat=8)
    model = build_model(spec)
    v = init_variables(spec, jax.random.key(7), lr_hw=(16, 16))
    x = jax.random.uniform(jax.random.key(8), (1, 16, 24, 3))
    logits, (_, upd) = jax.jit(lambda v, x: (
        model.apply(v, x), model.apply(v, x, train=True, mutable=["spectral"])))(v, x)
    assert logits.shape == (1, 16, 24, 1)
    u0, u1 = v["spectral"]["conv1"]["u"], upd["spectral"]["conv1"]["u"]
    assert not np.allclose(np.asarray(u0), np.asarray(u1))
    np.testing.assert_allclose(float(jnp.linalg.norm(u1)), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="divisible by 8"):
        model.apply(v, x[:, :12])


def test_build_model_exposes_spec_and_rejects_non_spec():
    spec = preset("tiny")
    assert build_model(spec).spec == spec
    with pytest.raises(TypeError):
        build_model({"kind": "student"})


def test_init_variables_matches_model_init_structure_and_torch_default_bounds():
    spec = preset("tiny", kind="student", scale=2)
    v = init_variables(spec, jax.random.key(9), lr_hw=(8, 8))
    shapes = abstract_variables(spec, lr_hw=(8, 8))
    assert jax.tree_util.tree_structure(v) == jax.tree_util.tree_structure(shapes)
    head = v["params"]["G"]["head"]
    bound = 1 / np.sqrt(3 * 3 * 3)                    # fan_in of a 3x3 conv on RGB
    for leaf in (head["kernel"], head["bias"]):
        assert float(jnp.max(jnp.abs(leaf))) <= bound
    fc2 = v["params"]["G"]["body"]["block_0"]["ddc"]["fc2"]["kernel"]   # dense (C, 9C)
    assert float(jnp.max(jnp.abs(fc2))) <= 1 / np.sqrt(16)
    assert float(jnp.std(fc2)) == pytest.approx(1 / np.sqrt(16) / np.sqrt(3), rel=0.1)
    other = init_variables(spec, jax.random.key(10), lr_hw=(8, 8))
    assert not np.allclose(np.asarray(head["kernel"]), np.asarray(other["params"]["G"]["head"]["kernel"]))


def test_init_variables_can_be_traced_by_eval_shape():
    spec = ModelSpec(kind="discriminator", setting="gan", d_num_feat=8)
    shapes = jax.eval_shape(lambda k: init_variables(spec, k), jax.random.key(0))
    assert shapes["spectral"]["conv1"]["v"].shape == (8 * 4 * 4,)
    assert count_params(shapes) == count_params(abstract_variables(spec))


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_remat_keeps_parameters_outputs_and_gradients(kind):
    """remat=True wraps IDR-DCRBs and KD-IDE ResBlocks in nn.remat: same parameter tree,
    the same output and the same gradients as without."""
    spec = preset("tiny", kind=kind, scale=2)
    plain, remat = build_model(spec), build_model(spec, remat=True)
    lr = jnp.asarray(rng(7).random((2, 8, 10, 3), np.float32))
    inputs = (lr,) if kind == "student" else (
        lr, jnp.asarray(rng(8).random((2, 16, 20, 3), np.float32)))
    v = init_variables(spec, jax.random.key(4))
    shapes = jax.eval_shape(remat.init, jax.random.key(0), *inputs)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(v)
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, v)

    def loss(model):
        def f(params):
            sr, feats = model.apply({"params": params}, *inputs, return_features=True)
            return jnp.sum(jnp.sin(3.0 * sr)) + jnp.sum(feats["fea"] ** 2)
        return jax.jit(jax.value_and_grad(f))

    (l_plain, g_plain), (l_remat, g_remat) = loss(plain)(v["params"]), loss(remat)(v["params"])
    assert float(l_remat) == float(l_plain)
    # equal up to float32 summation order (XLA fuses the recomputed blocks differently)
    for a, b in zip(jax.tree.leaves(g_remat), jax.tree.leaves(g_plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # The remat program really recomputes: jax.checkpoint's recomputation sits behind an
    # optimization barrier (prevent_cse), which the plain program has none of.
    def hlo(model):
        return jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, *inputs)))).lower(
            v["params"]).as_text()
    assert "optimization_barrier" in hlo(remat)
    assert "optimization_barrier" not in hlo(plain)


def test_remat_is_for_sr_models_only():
    with pytest.raises(ValueError, match="not to the discriminator"):
        build_model(ModelSpec(kind="discriminator", setting="gan"), remat=True)
