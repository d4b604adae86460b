"""Tests for kdsr_jax.degradation.realesrgan (reference/DEGRADATION.md §2.2)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdsr_jax.degradation import filters, interpolate, jpeg, noise, random_kernels
from kdsr_jax.degradation import realesrgan as rg

# Small geometry so the tests stay fast on a shared CPU: GT 96x96 -> LR 24x24, crops
# 64 (GT) / 16 (LQ). Every step keeps > 10 px for the 21x21 reflect-padded blurs.
ORI = 96
B = 2


def _small_cfg():
    cfg = rg.default_config()
    cfg.gt_input_size = ORI
    cfg.gt_size = 64
    return cfg


def _gt(seed=0, b=B, size=ORI):
    # Smooth random image with some texture, in [0, 1].
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(size=(b, size // 8, size // 8, 3)).astype(np.float32)
    img = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    img = 0.7 * img + 0.3 * rng.uniform(size=img.shape).astype(np.float32)
    return jnp.asarray(img)


def _kernels(seed=1, b=B):
    return random_kernels.sample_kernels(jax.random.key(seed), b, _small_cfg())


def _decisions(**overrides):
    """Explicit decisions; noise levels zero unless overridden."""
    d = rg.sample_decisions(jax.random.key(5), B, _small_cfg())
    zero = jnp.zeros((B,), jnp.float32)
    d["noise1"] = {"gaussian": jnp.bool_(True), "sigma": zero, "poisson_scale": zero,
                   "gray": zero}
    d["noise2"] = dict(d["noise1"])
    d["jpeg1_quality"] = jnp.asarray([40.0, 80.0])
    d["jpeg2_quality"] = jnp.asarray([90.0, 55.0])
    for k, v in overrides.items():
        d[k] = v
    return d


def _static_noise(key, x, canvas_hw, nd):
    """The pipeline's Gaussian noise, drawn on its canvas and cropped to x's size."""
    h, w = x.shape[1:3]
    zeros = jnp.zeros((x.shape[0],) + tuple(canvas_hw) + (3,), jnp.float32)
    field = noise.gaussian_noise(key, zeros, nd["sigma"], nd["gray"])[:, :h, :w]
    return jnp.clip(x + field, 0.0, 1.0)


def _static_reference(gt, kernels, d, cfg):
    """Straightforward static-shape composition of filter2d / resize / jpeg."""
    geo = rg._Geometry(cfg, gt.shape[1:3])
    modes = rg.RESIZE_MODES
    impl = cfg.blur_impl
    out = rg.blur(gt, kernels["kernel1"], impl)
    f1 = float(d["resize1_factor"])
    out = interpolate.resize(out, None, modes[int(d["resize1_mode"])], scale_factor=f1)
    out = _static_noise(d["noise_keys"][0], out, geo.canvas1, d["noise1"])
    out = jpeg.compress(jnp.clip(out, 0, 1), d["jpeg1_quality"])
    if bool(d["second_blur"]):
        out = rg.blur(out, kernels["kernel2"], impl)
    n2 = int(np.floor(np.float32(ORI / cfg.scale) * np.float32(d["resize2_factor"])))
    out = interpolate.resize(out, (n2, n2), modes[int(d["resize2_mode"])])
    out = _static_noise(d["noise_keys"][1], out, geo.canvas2, d["noise2"])
    final_mode = modes[int(d["final_mode"])]
    if bool(d["final_resize_first"]):
        out = interpolate.resize(out, geo.lq, final_mode)
        out = rg.blur(out, kernels["sinc_kernel"], impl)
        out = jpeg.compress(jnp.clip(out, 0, 1), d["jpeg2_quality"])
    else:
        out = jpeg.compress(jnp.clip(out, 0, 1), d["jpeg2_quality"])
        out = interpolate.resize(out, geo.lq, final_mode)
        out = rg.blur(out, kernels["sinc_kernel"], impl)
    return out


# Counts traces of the image pipeline (installed before anything is compiled).
TRACES = []
_original_degrade_with = rg.degrade_with


@pytest.fixture(scope="module", autouse=True)
def _count_traces():
    def counting(*args, **kwargs):
        TRACES.append(1)
        return _original_degrade_with(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rg, "degrade_with", counting)
        yield


def _degrade_with(gt, kernels, d):
    """The unrounded LR of the shared jitted pipeline (one compilation per module)."""
    return rg.make_degrade_fn(_small_cfg()).apply(gt, kernels, d)["lq_full"]

# (resize1 factor, mode1, second blur, resize2 factor, mode2, resize first, final mode)
CASES = [
    (0.37, 0, True, 0.55, 2, True, 1),
    (1.3, 2, True, 1.1, 1, False, 0),
    (1.0, 1, False, 1.0, 0, False, 2),
    (0.61, 1, True, 0.3, 2, True, 2),
]


@pytest.mark.parametrize("case", CASES)
def test_canvas_pipeline_equals_static_composition(case):
    f1, m1, blur2, f2, m2, resize_first, fm = case
    d = _decisions(resize1_factor=jnp.float32(f1), resize1_mode=jnp.int32(m1),
                   second_blur=jnp.bool_(blur2), resize2_factor=jnp.float32(f2),
                   resize2_mode=jnp.int32(m2), final_resize_first=jnp.bool_(resize_first),
                   final_mode=jnp.int32(fm))
    d["noise1"] = dict(d["noise1"], sigma=jnp.asarray([3.0, 20.0]),
                       gray=jnp.asarray([1.0, 0.0]))
    d["noise2"] = dict(d["noise2"], sigma=jnp.asarray([10.0, 1.0]),
                       gray=jnp.asarray([0.0, 1.0]))
    gt, kernels = _gt(), _kernels()
    got = np.asarray(_degrade_with(gt, kernels, d))
    want = np.asarray(_static_reference(gt, kernels, d, _small_cfg()))
    assert got.shape == want.shape == (B, ORI // 4, ORI // 4, 3)
    err = np.abs(got - want)
    # On CPU the two paths agree bit for bit; elsewhere they may differ by float32
    # summation order (canvas matrices carry zero columns), and JPEG rounding can turn
    # a 1e-7 difference into a flipped coefficient (fixtures/README.md DiffJPEG note).
    assert np.mean(err <= 1e-6) >= 0.999, np.mean(err <= 1e-6)
    assert err.max() <= 0.05, err.max()


def test_canvas_pipeline_with_poisson_noise_matches_static_statistics():
    """Poisson noise on the canvas: the distinct-level count uses the valid region."""
    d = _decisions(resize1_factor=jnp.float32(0.5), resize1_mode=jnp.int32(0),
                   second_blur=jnp.bool_(False), resize2_factor=jnp.float32(1.0))
    d["noise1"] = dict(d["noise1"], gaussian=jnp.bool_(False),
                       poisson_scale=jnp.asarray([1.0, 1.0]))
    got = np.asarray(_degrade_with(_gt(), _kernels(), d))
    d["noise1"] = dict(d["noise1"], poisson_scale=jnp.zeros((B,)))
    clean = np.asarray(_degrade_with(_gt(), _kernels(), d))
    diff = got - clean
    assert np.abs(diff).max() > 0.01  # noise is there
    assert abs(diff.mean()) < 0.01    # Poisson noise is unbiased (before clipping)


@pytest.mark.parametrize("impl", rg.BLUR_IMPLS)
def test_filter2d_in_canvas_equals_filter2d_of_valid_region(impl):
    rng = np.random.default_rng(3)
    kernels = _kernels()["kernel1"]
    f = jax.jit(functools.partial(rg.filter2d_in_canvas, impl=impl))
    for h, w in [(11, 11), (37, 50), (64, 64)]:
        img = rng.uniform(size=(B, h, w, 3)).astype(np.float32)
        canvas = np.zeros((B, 64, 64, 3), np.float32)
        canvas[:, :h, :w] = img
        got = np.asarray(f(canvas, kernels, (jnp.int32(h), jnp.int32(w))))
        want = filters.filter2d(jnp.asarray(img), kernels)
        # fixtures/README.md: 21x21 filter2D max abs <= 5e-6.
        np.testing.assert_allclose(got[:, :h, :w], np.asarray(want), rtol=0, atol=5e-6)
        assert not got[:, h:].any() and not got[:, :, w:].any()


@pytest.mark.parametrize("name, tol", [("shared", 5e-6), ("batch", 5e-6), ("k7", 1e-6),
                                       ("asym", 1e-6)])
def test_fft_filter2d_matches_basicsr_filter2d_fixture(fixtures_dir, name, tol):
    """basicsr_filter2d.npz, max abs 5e-6 (21x21) / 1e-6 (short filters)."""
    z = np.load(fixtures_dir / "basicsr_filter2d.npz")
    img = jnp.asarray(z["in_img"].transpose(0, 2, 3, 1))
    got = np.asarray(rg.fft_filter2d(img, z[f"kernel_{name}"])).transpose(0, 3, 1, 2)
    assert np.abs(got - z[f"out_{name}"]).max() <= tol


def test_unknown_blur_impl_raises_value_error():
    cfg = _small_cfg()
    cfg.blur_impl = "winograd"
    with pytest.raises(ValueError, match="winograd"):
        rg.degrade(jax.random.key(0), _gt(), cfg)


def test_degrade_outputs_shapes_dtypes_8bit_range_and_compiles_once():
    fn = rg.make_degrade_fn(_small_cfg())
    gt = _gt()
    outs = [fn(jax.random.key(0), gt)]
    traces_after_first = len(TRACES)
    outs += [fn(jax.random.key(s), gt) for s in (1, 2, 3)]
    assert len(TRACES) == traces_after_first <= 1  # new keys never retrace
    for gt_patch, lq_patch in outs:
        assert gt_patch.shape == (B, 64, 64, 3) and gt_patch.dtype == jnp.float32
        assert lq_patch.shape == (B, 16, 16, 3) and lq_patch.dtype == jnp.float32
        lq = np.asarray(lq_patch)
        assert lq.min() >= 0 and lq.max() <= 1
        np.testing.assert_allclose(lq * 255, np.round(lq * 255), atol=1e-4)
        # GT patch is a crop of the GT at a multiple of the scale.
        g = np.asarray(gt_patch)[0]
        full = np.asarray(gt)[0]
        hits = [(t, l) for t in range(0, ORI - 63, 4) for l in range(0, ORI - 63, 4)
                if np.array_equal(full[t:t + 64, l:l + 64], g)]
        assert hits
    assert not np.array_equal(np.asarray(outs[0][1]), np.asarray(outs[1][1]))


def test_sample_decisions_follow_yml_probabilities():
    cfg = rg.default_config()
    keys = jax.random.split(jax.random.key(7), 3000)
    d = jax.vmap(lambda k: rg.sample_decisions(k, 2, cfg))(keys)
    f1 = np.asarray(d["resize1_factor"])
    n = f1.size
    assert abs(np.mean(f1 > 1) - 0.2) < 0.04 and abs(np.mean(f1 < 1) - 0.7) < 0.04
    assert abs(np.mean(f1 == 1) - 0.1) < 0.03
    assert f1.min() >= 0.15 and f1.max() < 1.5
    f2 = np.asarray(d["resize2_factor"])
    assert abs(np.mean(f2 > 1) - 0.3) < 0.04 and abs(np.mean(f2 == 1) - 0.3) < 0.04
    assert f2.min() >= 0.3 and f2.max() < 1.2
    for key in ("resize1_mode", "resize2_mode", "final_mode"):
        counts = np.bincount(np.asarray(d[key]), minlength=3)
        assert np.all(np.abs(counts / n - 1 / 3) < 0.04), key
    assert abs(np.mean(np.asarray(d["second_blur"])) - 0.8) < 0.03
    assert abs(np.mean(np.asarray(d["final_resize_first"])) - 0.5) < 0.04
    assert abs(np.mean(np.asarray(d["noise1"]["gaussian"])) - 0.5) < 0.04
    assert abs(np.mean(np.asarray(d["noise2"]["gray"])) - 0.4) < 0.03
    s1 = np.asarray(d["noise1"]["sigma"])
    assert s1.min() >= 1 and s1.max() < 30
    q = np.asarray(d["jpeg1_quality"])
    assert q.min() >= 30 and q.max() < 95
    top = np.asarray(d["crop_top"])
    assert top.min() == 0 and top.max() == 100 - 64


def test_default_config_has_the_yml_values():
    cfg = rg.default_config()
    assert cfg.resize_prob == [0.2, 0.7, 0.1] and cfg.resize_range == [0.15, 1.5]
    assert cfg.resize_prob2 == [0.3, 0.4, 0.3] and cfg.resize_range2 == [0.3, 1.2]
    assert cfg.noise_range == [1.0, 30.0] and cfg.noise_range2 == [1.0, 25.0]
    assert cfg.poisson_scale_range == [0.05, 3.0] and cfg.poisson_scale_range2 == [0.05, 2.5]
    assert cfg.gray_noise_prob == cfg.gray_noise_prob2 == 0.4
    assert cfg.jpeg_range == cfg.jpeg_range2 == [30.0, 95.0]
    assert cfg.second_blur_prob == 0.8 and cfg.final_sinc_prob == 0.8
    assert cfg.sinc_prob == cfg.sinc_prob2 == 0.1
    assert cfg.blur_sigma == [0.2, 3.0] and cfg.blur_sigma2 == [0.2, 1.5]
    assert cfg.gt_size == 256 and cfg.scale == 4 and cfg.gt_input_size == 400
    assert cfg.queue_size == 180 and cfg.group_size == 9
    # The ymls' USM flags are read nowhere in the official models but the V2 teacher
    # input (configs/gan.py usm_teacher_gt): not degradation fields.
    assert not any("usm" in name for name in cfg)


@pytest.mark.parametrize("gt, match", [
    (jnp.zeros((ORI, ORI, 3)), r"\(96, 96, 3\)"),
    (jnp.zeros((B, ORI, ORI, 3), jnp.uint8), "dtype uint8"),
    (jnp.zeros((B, 40, 40, 3)), r"\(2, 40, 40, 3\)"),
    (jnp.zeros((B, ORI, ORI, 4)), r"\(2, 96, 96, 4\)"),
])
def test_bad_input_raises_value_error_naming_the_shape(gt, match):
    with pytest.raises(ValueError, match=match):
        rg.degrade(jax.random.key(0), gt, _small_cfg())


def test_groups_draw_independently_with_keys_from_the_group_index():
    """Each group of `group_size` images is degraded as if alone, with the key
    fold_in(key, group): its result does not depend on the other images."""
    cfg = _small_cfg()
    cfg.group_size = 1
    key = jax.random.key(5)
    gt = _gt(3)
    _, gt_p, lq_p = rg.degrade_groups(key, gt, cfg)
    for g in range(B):
        k_deg, _ = jax.random.split(jax.random.fold_in(key, g))
        alone_gt, alone_lq = rg.degrade(k_deg, gt[g:g + 1], cfg)
        np.testing.assert_array_equal(np.asarray(lq_p[g:g + 1]), np.asarray(alone_lq))
        np.testing.assert_array_equal(np.asarray(gt_p[g:g + 1]), np.asarray(alone_gt))
    # Changing group 1's image leaves group 0's pair as it was.
    _, _, lq_other = rg.degrade_groups(key, gt.at[1].set(gt[0] * 0.5), cfg)
    np.testing.assert_array_equal(np.asarray(lq_other[0]), np.asarray(lq_p[0]))


def test_groups_have_their_own_batch_level_decisions():
    cfg = _small_cfg()
    cfg.group_size = 1
    key = jax.random.key(0)
    firsts = set()
    for g in range(16):
        k_deg, _ = jax.random.split(jax.random.fold_in(key, g))
        _, k_dec = jax.random.split(k_deg)
        d = rg.sample_decisions(k_dec, 1, cfg, (ORI, ORI))
        firsts.add((float(d["resize1_factor"]), float(d["resize2_factor"])))
    assert len(firsts) == 16


def test_batch_not_a_multiple_of_the_group_size_is_a_clear_error():
    cfg = _small_cfg()
    cfg.group_size = 3
    with pytest.raises(ValueError, match="group_size 3"):
        rg.degrade_groups(jax.random.key(0), _gt(), cfg)


@pytest.mark.parametrize("field, value, match", [
    ("blur_kernel_size", 15, "blur_kernel_size=15"),
    ("kernel_list", ["iso", "gaussian"], "kernel_list.*gaussian"),
    ("kernel_prob", [0.5, 0.5], "kernel_prob has 2 entries"),
    ("kernel_prob2", [0, 0, 0, 0, 0, 0], "kernel_prob2"),
    ("kernel_range", [7, 8], "kernel_range"),
    ("kernel_range", [23], "kernel_range"),
    ("resize_prob", [0.5, 0.5], "resize_prob"),
])
def test_fields_the_pipeline_cannot_honour_are_refused_naming_the_field(field, value, match):
    cfg = rg.default_config()
    cfg[field] = value
    with pytest.raises(ValueError, match=match):
        rg.check_config(cfg)
