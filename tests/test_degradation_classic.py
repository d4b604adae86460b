"""Tests for the classic KDSR degradation (kernels, bicubic, classic pipeline).

Parity with every `deg_*` fixture (official util2/util.py), at the fixture README
tolerances, plus statistical checks of the random draws and a no-recompilation check.
"""

import json
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kdsr_jax.degradation import bicubic, classic, kernels

from conftest import to_nhwc

# Fixture README "How to compare".
KERNEL_ATOL, KERNEL_RTOL = 1e-7, 1e-5      # float32 kernels
BLUR_TOL = 5e-6                            # 21x21 blur output
RESIZE_TOL = 1e-6                          # bicubic, lr_prequant, hr_blured_prequant
MAX_OFF_FRACTION = 1e-3                    # quantised outputs: <= 0.1% off by one level,
BOUNDARY_TOL = 1e-6                        # ... only within 1e-6 of a rounding boundary

UTIL2_FIXTURES = [
    "deg_srmd_iso_sig1.2_x4", "deg_srmd_iso_sig2.6_x4", "deg_srmd_iso_sig1.2_x2",
    "deg_srmd_iso_sig2.6_x2", "deg_srmd_aniso_l4.0_l1.5_t120_x4",
    "deg_srmd_aniso_l3.5_l1.5_t30_x4", "deg_srmd_aniso_l0.8_l2.4_t45_x2",
    "deg_srmd_iso_sig0_x4", "deg_srmd_aniso_noise25_x4",
]
NOISELESS_FIXTURES = [n for n in UTIL2_FIXTURES if "noise" not in n]


def _load(fixtures_dir, name):
    z = np.load(fixtures_dir / f"{name}.npz")
    return z, json.loads(str(z["config_json"]))


def _official_config(cfg_json):
    """test_config from the fixture's official constructor call (official arg names)."""
    call = cfg_json["official_call"].split("SRMDPreprocessing(", 1)[1]
    scale = int(re.match(r"(?:scale=)?(\d+)", call).group(1))
    kw = {m.group(1): m.group(2).strip("'")
          for m in re.finditer(r"(\w+)=([\w.']+)", call)}
    params = dict(scale=scale, blur_type=kw["blur_type"], noise=float(kw["noise"]))
    for name in ("sig", "lambda_1", "lambda_2", "theta"):
        if name in kw:
            params[name] = float(kw[name])
    return classic.test_config(**params)


def _quantised_mismatch(got, ref, unquantised, what):
    """Number of pixels where `got` != `ref`; each must be off by exactly one 8-bit level
    and its unquantised value must lie within 1e-6 of a rounding boundary (README)."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    steps = (got - ref) * 255.0
    off = steps != 0
    assert np.all(np.abs(np.abs(steps[off]) - 1) < 1e-3), f"{what}: off by more than 1/255"
    frac = np.asarray(unquantised)[off] * 255.0 % 1.0
    assert np.all(np.abs(frac - 0.5) <= BOUNDARY_TOL * 255.0), \
        f"{what}: a pixel differs away from a rounding boundary ({frac})"
    return int(off.sum())


def _assert_quantised_match(got, ref, unquantised, what):
    """Exact, except <= 0.1% of pixels off by exactly one level at a rounding boundary."""
    n = _quantised_mismatch(got, ref, unquantised, what)
    assert n <= MAX_OFF_FRACTION * np.size(ref), f"{what}: {n} of {np.size(ref)} differ"


def _max_err(got, ref):
    return float(np.abs(np.asarray(got) - np.asarray(ref)).max())


# --- Kernels -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in UTIL2_FIXTURES if "sig0" not in n])
def test_fixed_kernel_matches_util2_fixture(fixtures_dir, name):
    """deg_srmd_* `kernel` (1,21,21): |Δ| <= 1e-7 + 1e-5|ref|, eager and under jit."""
    z, cfg_json = _load(fixtures_dir, name)
    cfg = _official_config(cfg_json)
    key = jax.random.PRNGKey(0)
    eager = classic.make_kernels(key, cfg, 2)
    jitted = jax.jit(lambda k: classic.make_kernels(k, cfg, 2))(key)
    assert eager.shape == (1, 21, 21)
    for got in (eager, jitted):
        np.testing.assert_allclose(np.asarray(got), z["kernel"], atol=KERNEL_ATOL,
                                   rtol=KERNEL_RTOL)


def test_iso_sigma_zero_skips_blur(fixtures_dir):
    """deg_srmd_iso_sig0_x4 stores an empty kernel: sig=0 means no kernel and no blur."""
    z, cfg_json = _load(fixtures_dir, "deg_srmd_iso_sig0_x4")
    cfg = _official_config(cfg_json)
    assert z["kernel"].size == 0
    assert classic.make_kernels(jax.random.PRNGKey(0), cfg, 2) is None
    hr = jnp.asarray(to_nhwc(z["in_hr"]))
    out = classic.degrade_full(jax.random.PRNGKey(0), hr, cfg)
    np.testing.assert_array_equal(np.asarray(out.blurred_hr), np.asarray(hr))


def test_per_image_aniso_kernels_match_util_random_fixture(fixtures_dir):
    """deg_srmd_util_random_aniso_x4 `kernels` (3,21,21) from stored theta (rad)/lambdas."""
    z, _ = _load(fixtures_dir, "deg_srmd_util_random_aniso_x4")
    params = {"theta": z["sampled_theta_rad"], "lambda1": z["sampled_lambda_1"],
              "lambda2": z["sampled_lambda_2"]}
    got = jax.jit(classic.kernels_from_params)(params)
    np.testing.assert_allclose(np.asarray(got), z["kernels"], atol=KERNEL_ATOL,
                               rtol=KERNEL_RTOL)


def test_random_iso_kernel_matches_util2_random_fixture(fixtures_dir):
    """deg_srmd_util2_random_iso_noise_x4 `kernel` from the stored sampled sigma."""
    z, _ = _load(fixtures_dir, "deg_srmd_util2_random_iso_noise_x4")
    got = jax.jit(kernels.isotropic_gaussian)(z["sampled_sigma"])
    np.testing.assert_allclose(np.asarray(got), z["kernel"], atol=KERNEL_ATOL,
                               rtol=KERNEL_RTOL)


def test_aniso_orientation_theta_45_elongates_along_main_diagonal():
    """θ=45°, λ1>λ2: mass along top-left -> bottom-right (+y is down), §1.3."""
    k = np.asarray(kernels.anisotropic_gaussian(3.0, 0.5, kernels.degrees_to_radians(45.0)))
    assert k[5, 5] > 100 * k[5, 15]          # (y=-5, x=-5) vs (y=-5, x=+5)
    np.testing.assert_allclose(k.sum(), 1.0, rtol=1e-6)
    k0 = np.asarray(kernels.anisotropic_gaussian(3.0, 0.5, 0.0))
    assert k0[10, 15] > 100 * k0[15, 10]     # θ=0: λ1 along x (columns)


# --- Bicubic -----------------------------------------------------------------------------

@pytest.mark.parametrize("s", [2, 3, 4])
def test_bicubic_weights_and_indices_match_fixture(fixtures_dir, s):
    """deg_bicubic_x{s}: contribute() weights within 1e-6 and 1-based indices exactly."""
    z, _ = _load(fixtures_dir, f"deg_bicubic_x{s}")
    h, w = z["in_x"].shape[2:]
    lh, lw = z["out_down"].shape[2:]
    for direction, scale, sizes in (("down", 1 / s, (h, w)), ("up", s, (lh, lw))):
        for axis, n in zip("hw", sizes):
            wt, idx = bicubic.contributions(n, scale)
            ref_w = z[f"{direction}_weight_{axis}"]
            ref_i = z[f"{direction}_index_{axis}_1based"]
            assert wt.shape == ref_w.shape, (direction, axis, wt.shape, ref_w.shape)
            assert _max_err(wt, ref_w) <= RESIZE_TOL, (direction, axis)
            np.testing.assert_array_equal(idx + 1, ref_i)


@pytest.mark.parametrize("s", [2, 3, 4])
def test_bicubic_resize_matches_fixture(fixtures_dir, s):
    """deg_bicubic_x{s}: out_down and out_up_of_down within 1e-6 (jitted)."""
    z, _ = _load(fixtures_dir, f"deg_bicubic_x{s}")
    down = jax.jit(bicubic.downscale, static_argnums=1)(jnp.asarray(to_nhwc(z["in_x"])), s)
    assert _max_err(down, to_nhwc(z["out_down"])) <= RESIZE_TOL
    up = jax.jit(bicubic.upscale, static_argnums=1)(jnp.asarray(to_nhwc(z["out_down"])), s)
    assert _max_err(up, to_nhwc(z["out_up_of_down"])) <= RESIZE_TOL


def test_bicubic_x4_keeps_16_of_18_taps_and_rows_sum_to_one():
    """The official zero-weight column drop (18 candidates -> 16), normalised weights."""
    assert bicubic.num_taps(1 / 4) == 18
    w, idx = bicubic.contributions(256, 1 / 4)
    assert w.shape == (64, 16) and idx.min() == 0 and idx.max() == 255
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(bicubic.resize_matrix(256, 1 / 4).sum(1), 1.0, atol=1e-6)


# --- Pipeline parity -----------------------------------------------------------------------
# Each fixture is run once (cached); the per-fixture tests check the float outputs and
# that every quantised mismatch is a boundary case, the pooled test the 0.1% budget (a
# single pixel is already 0.14% of a 720-pixel x4 fixture).

ALL_PIPELINE_FIXTURES = UTIL2_FIXTURES + ["deg_srmd_util2_random_iso_noise_x4",
                                          "deg_srmd_util_random_aniso_x4"]
_RUNS = {}


def _run_fixture(fixtures_dir, name):
    """Runs the JAX pipeline on a fixture; returns (fixture, outputs, {quantised: (got,
    ref, unquantised)})."""
    if name in _RUNS:
        return _RUNS[name]
    z, cfg_json = _load(fixtures_dir, name)
    hr = jnp.asarray(to_nhwc(z["in_hr"]))
    s = z["in_hr"].shape[2] // z["out_lr"].shape[2]
    if name == "deg_srmd_util_random_aniso_x4":       # util.py: one kernel per image
        ker = classic.kernels_from_params({"theta": z["sampled_theta_rad"],
                                           "lambda1": z["sampled_lambda_1"],
                                           "lambda2": z["sampled_lambda_2"]})
        out = jax.jit(classic.apply, static_argnums=2)(hr, ker, s)
    elif "noise" in z.files:                         # replay the stored noise tensor
        if "sampled_sigma" in z.files:
            ker = kernels.isotropic_gaussian(z["sampled_sigma"])
        else:
            ker = classic.make_kernels(None, _official_config(cfg_json), hr.shape[0])
        out = jax.jit(classic.apply, static_argnums=2)(hr, ker, s,
                                                        jnp.asarray(to_nhwc(z["noise"])))
    else:                                            # the whole keyed, jitted pipeline
        cfg = _official_config(cfg_json)
        out = jax.jit(lambda k, x: classic.degrade_full(k, x, cfg))(
            jax.random.PRNGKey(3), hr)
    lr_pre = to_nhwc(z["lr_prequant"] if "lr_prequant" in z.files
                   else z["lr_prequant_noiseless"])
    unq_lr = lr_pre + (to_nhwc(z["noise"]) if "noise" in z.files else 0)
    quantised = {"out_lr": (out.lr, to_nhwc(z["out_lr"]), unq_lr)}
    if "noise" not in z.files and "sig=" in cfg_json["official_call"] and \
            z["kernel"].size:                        # iso: `degrade` takes the fast path
        fast = jax.jit(lambda k, x: classic.degrade(k, x, cfg))(jax.random.PRNGKey(3), hr)
        quantised["out_lr (separable fast path)"] = (fast, to_nhwc(z["out_lr"]), unq_lr)
    if "out_hr_blured" in z.files:
        up = classic.upsample_lr(out.lr_noisy, s, quantized=False)
        unq_up = to_nhwc(z["hr_blured_prequant"]) if "hr_blured_prequant" in z.files else up
        quantised["out_hr_blured"] = (classic.quantize(up), to_nhwc(z["out_hr_blured"]),
                                      unq_up)
    _RUNS[name] = (z, out, quantised)
    return _RUNS[name]


@pytest.mark.parametrize("name", ALL_PIPELINE_FIXTURES)
def test_pipeline_float_outputs_match_fixture(fixtures_dir, name):
    """blurred_hr 5e-6; lr_prequant(_noiseless) 1e-6; hr_blured_prequant 1e-6."""
    z, out, _ = _run_fixture(fixtures_dir, name)
    if "blurred_hr" in z.files:
        assert _max_err(out.blurred_hr, to_nhwc(z["blurred_hr"])) <= BLUR_TOL
    if "kernel" in z.files and z["kernel"].size == 0:      # sig=0: no blur at all
        np.testing.assert_array_equal(np.asarray(out.blurred_hr), to_nhwc(z["in_hr"]))
    pre = z["lr_prequant"] if "lr_prequant" in z.files else z["lr_prequant_noiseless"]
    assert _max_err(out.lr_clean, to_nhwc(pre)) <= RESIZE_TOL
    if "hr_blured_prequant" in z.files:
        s = z["in_hr"].shape[2] // z["out_lr"].shape[2]
        up = classic.upsample_lr(out.lr_noisy, s, quantized=False)
        assert _max_err(up, to_nhwc(z["hr_blured_prequant"])) <= RESIZE_TOL


@pytest.mark.parametrize("name", [n for n in ALL_PIPELINE_FIXTURES
                                  if "iso_sig" in n and "sig0" not in n]
                         + ["deg_srmd_util2_random_iso_noise_x4"])
def test_separable_iso_fast_path_matches_fixture_lr_prequant(fixtures_dir, name):
    """iso_blur_downscale (blur + bicubic as two matmuls): lr_prequant(_noiseless) 1e-6."""
    z, cfg_json = _load(fixtures_dir, name)
    sigma = (z["sampled_sigma"] if "sampled_sigma" in z.files
             else np.float32([cfg_json["params"]["sig"]]))
    s = z["in_hr"].shape[2] // z["out_lr"].shape[2]
    lr = jax.jit(classic.iso_blur_downscale, static_argnums=2)(
        jnp.asarray(to_nhwc(z["in_hr"])), sigma, s)
    pre = z["lr_prequant"] if "lr_prequant" in z.files else z["lr_prequant_noiseless"]
    assert _max_err(lr, to_nhwc(pre)) <= RESIZE_TOL


def test_separable_fast_path_equals_2d_blur_per_image():
    """Per-image sigmas: iso_blur_downscale == apply(2-D kernels).lr_clean within 1e-6,
    and `degrade` == `degrade_full(...).lr` for the same key except rounding ties."""
    hr = jax.random.uniform(jax.random.PRNGKey(11), (3, 40, 48, 3))
    sigma = jnp.asarray([0.2, 1.7, 3.99])
    fast = classic.iso_blur_downscale(hr, sigma, 4)
    ref = classic.apply(hr, classic.kernels_from_params({"sigma": sigma}), 4).lr_clean
    assert _max_err(fast, ref) <= RESIZE_TOL
    cfg = _cfg(per_sample=True, noise=25.0)
    key = jax.random.PRNGKey(12)
    lr = jax.jit(lambda k, x: classic.degrade(k, x, cfg))(key, hr)
    full = jax.jit(lambda k, x: classic.degrade_full(k, x, cfg))(key, hr)
    _quantised_mismatch(lr, full.lr, full.lr_noisy, "degrade vs degrade_full")


@pytest.mark.parametrize("name", ALL_PIPELINE_FIXTURES)
def test_pipeline_quantised_outputs_match_fixture_up_to_boundary_ties(fixtures_dir, name):
    """out_lr / out_hr_blured: exact, except pixels off by exactly 1/255 whose unquantised
    value is within 1e-6 of a rounding boundary."""
    _, _, quantised = _run_fixture(fixtures_dir, name)
    for what, (got, ref, unq) in quantised.items():
        _quantised_mismatch(got, ref, unq, f"{name}:{what}")


def test_pipeline_quantised_outputs_differ_on_at_most_0p1_percent_of_pixels(fixtures_dir):
    """Over all deg_srmd_* fixtures, out_lr and out_hr_blured together: <= 0.1% of the
    quantised pixels differ (README "Quantised outputs")."""
    n_off = n_all = 0
    for name in ALL_PIPELINE_FIXTURES:
        for what, (got, ref, unq) in _run_fixture(fixtures_dir, name)[2].items():
            n_off += _quantised_mismatch(got, ref, unq, f"{name}:{what}")
            n_all += np.size(ref)
    assert n_off <= MAX_OFF_FRACTION * n_all, f"{n_off} of {n_all} quantised pixels differ"


def test_quantize_is_round_half_even_clamped_and_exact_levels():
    """round(clamp(255x)) / 255 with ties to even; levels equal NumPy's k/255 exactly."""
    x = jnp.asarray([-0.3, 0.5 / 255, 1.5 / 255, 2.5 / 255, 254.5 / 255, 1.7])
    q = np.asarray(jax.jit(classic.quantize)(x)) * 255
    np.testing.assert_allclose(q, [0, 0, 2, 2, 254, 255], atol=1e-4)
    levels = np.arange(256, dtype=np.float32) / np.float32(255)
    np.testing.assert_array_equal(np.asarray(jax.jit(classic.quantize)(levels)), levels)


# --- Random draws (statistics, fixed keys) ------------------------------------------------

def _cfg(**kw):
    cfg = classic.default_config()
    cfg.update(kw)
    return cfg


def test_random_iso_sigma_is_uniform_in_official_range():
    """σ ~ U[0.2, 4.0): 20000 draws stay in range, mean 2.1, quartiles ~1.15 / 3.05."""
    cfg = _cfg(blur="iso", per_sample=True)
    sig = np.asarray(classic.kernel_params(jax.random.PRNGKey(0), cfg, 20000)["sigma"])
    assert sig.min() >= 0.2 and sig.max() < 4.0
    assert abs(sig.mean() - 2.1) < 0.03
    np.testing.assert_allclose(np.quantile(sig, [0.25, 0.75]), [1.15, 3.05], atol=0.05)


def test_random_aniso_params_are_uniform_in_official_ranges():
    """θ ~ U[0, π) radians, λ1, λ2 ~ U[0.2, 4.0), independent draws."""
    cfg = _cfg(blur="aniso", per_sample=True)
    p = {k: np.asarray(v)
         for k, v in classic.kernel_params(jax.random.PRNGKey(1), cfg, 20000).items()}
    assert p["theta"].min() >= 0 and p["theta"].max() < np.pi
    assert abs(p["theta"].mean() - np.pi / 2) < 0.03
    for name in ("lambda1", "lambda2"):
        assert p[name].min() >= 0.2 and p[name].max() < 4.0
        assert abs(p[name].mean() - 2.1) < 0.03
    assert abs(np.corrcoef(p["lambda1"], p["lambda2"])[0, 1]) < 0.03


@pytest.mark.parametrize("blur", ["iso", "aniso"])
def test_per_batch_draw_gives_every_image_the_same_kernel(blur):
    """per_sample=False (util2): one kernel for the batch; identical HR -> identical LR.
    per_sample=True: each image its own kernel."""
    hr = jnp.broadcast_to(jax.random.uniform(jax.random.PRNGKey(2), (1, 32, 32, 3)),
                          (4, 32, 32, 3))
    key = jax.random.PRNGKey(5)
    shared = classic.make_kernels(key, _cfg(blur=blur), 4)
    assert shared.shape == (1, 21, 21)
    lr = np.asarray(jax.jit(lambda k, x: classic.degrade(k, x, _cfg(blur=blur)))(key, hr))
    for i in range(1, 4):
        np.testing.assert_array_equal(lr[i], lr[0])
    own = np.asarray(classic.make_kernels(key, _cfg(blur=blur, per_sample=True), 4))
    assert own.shape == (4, 21, 21)
    assert all(np.abs(own[i] - own[0]).max() > 1e-4 for i in range(1, 4))


def test_deterministic_noise_has_exact_level_per_pixel_and_channel():
    """random=False, noise=25: additive noise with std 25/255, mean 0, independent
    channels; in the pipeline it is added to the bicubic output before quantisation."""
    cfg = classic.test_config(blur="iso", sigma=1.0, noise=25.0)
    n = np.asarray(jax.jit(lambda k: classic.sample_noise(k, cfg, (4, 128, 128, 3)))(
        jax.random.PRNGKey(6)))
    assert n.std() == pytest.approx(25 / 255, rel=0.02)
    assert abs(n.mean()) < 2e-3
    assert abs(np.corrcoef(n[..., 0].ravel(), n[..., 1].ravel())[0, 1]) < 0.03
    out = jax.jit(lambda k, x: classic.degrade_full(k, x, cfg))(
        jax.random.PRNGKey(6), jnp.full((2, 64, 64, 3), 0.5))
    added = np.asarray(out.lr_noisy - out.lr_clean)
    assert added.std() == pytest.approx(25 / 255, rel=0.1)
    np.testing.assert_array_equal(np.asarray(out.lr), np.asarray(classic.quantize(
        out.lr_noisy)))


def test_random_noise_level_is_one_uniform_draw_per_batch():
    """random=True, noise=25: σ_n = U[0,1)·25/255, shared by the batch (util2); per_sample
    draws one per image."""
    cfg = _cfg(noise=25.0)
    levels = np.asarray(jax.vmap(lambda k: classic.noise_levels(k, cfg, 8))(
        jax.random.split(jax.random.PRNGKey(7), 5000)))
    assert levels.shape == (5000, 1, 1, 1, 1)
    assert levels.min() >= 0 and levels.max() < 25 / 255
    assert abs(levels.mean() - 12.5 / 255) < 0.5 / 255
    noise = np.asarray(classic.sample_noise(jax.random.PRNGKey(8), cfg, (4, 64, 64, 3)))
    stds = noise.reshape(4, -1).std(1)
    np.testing.assert_allclose(stds / stds[0], 1.0, atol=0.05)
    per = np.asarray(classic.noise_levels(jax.random.PRNGKey(9), _cfg(noise=25.0,
                                                                      per_sample=True), 8))
    assert per.shape == (8, 1, 1, 1) and len(np.unique(per)) == 8


def test_zero_noise_draws_no_noise():
    """noise=0 (iso training): the LR is just the quantised bicubic output."""
    assert classic.sample_noise(jax.random.PRNGKey(0), _cfg(), (1, 4, 4, 3)) is None
    out = classic.degrade_full(jax.random.PRNGKey(0), jnp.full((1, 24, 24, 3), 0.3), _cfg())
    np.testing.assert_array_equal(np.asarray(out.lr_noisy), np.asarray(out.lr_clean))


# --- jit behaviour and config ---------------------------------------------------------------

def test_jitted_degrade_does_not_recompile_for_new_batches_or_keys():
    """Same shapes, different images and keys: traced exactly once."""
    traces = []
    cfg = _cfg(blur="aniso", noise=25.0)

    @jax.jit
    def step(key, hr):
        traces.append(1)
        return classic.degrade(key, hr, cfg)

    for i in range(3):
        hr = jax.random.uniform(jax.random.PRNGKey(10 + i), (2, 32, 32, 3))
        lr = step(jax.random.PRNGKey(i), hr)
    assert lr.shape == (2, 8, 8, 3)
    assert len(traces) == 1


def test_frozen_config_works_as_static_jit_argument():
    """A FrozenConfigDict is hashable: degrade can take it as a static argument."""
    cfg = ml_collections.FrozenConfigDict(_cfg(scale=2))
    f = jax.jit(classic.degrade, static_argnames="cfg")
    lr = f(jax.random.PRNGKey(0), jnp.zeros((1, 24, 24, 3)), cfg=cfg)
    assert lr.shape == (1, 12, 12, 3)


def test_official_argument_names_are_accepted_as_aliases():
    """blur_type/sig/lambda_1/lambda_2 (official names) map onto the config fields."""
    s = classic.resolve(classic.test_config(blur_type="aniso_gaussian", lambda_1=4.0,
                                            lambda_2=1.5, theta=120, noise=10))
    assert (s.blur, s.lambda1, s.lambda2, s.theta, s.noise, s.random) == \
        ("aniso", 4.0, 1.5, 120.0, 10.0, False)
    cfg = _cfg()
    cfg.blur_type = "aniso_gaussian"          # as a training config may set it
    assert classic.resolve(cfg).blur == "aniso"
    assert classic.resolve(classic.test_config(sig=0)).skips_blur


@pytest.mark.parametrize("shape,dtype,cfg_kw,match", [
    ((32, 32, 3), jnp.float32, {}, r"\(B, H, W, C\).*\(32, 32, 3\)"),
    ((1, 32, 32, 3), jnp.uint8, {}, r"float.*uint8.*\(1, 32, 32, 3\)"),
    ((1, 8, 40, 3), jnp.float32, {"scale": 2}, r"8x40.*\(1, 8, 40, 3\).*> 10"),
    ((1, 30, 32, 3), jnp.float32, {}, r"30x32.*\(1, 30, 32, 3\).*divisible.*4"),
    ((1, 32, 32, 3), jnp.float32, {"blur": "motion"}, r"unknown blur type 'motion'"),
    ((1, 32, 32, 3), jnp.float32, {"scale": 0}, r"scale must be a positive integer"),
])
def test_degrade_rejects_bad_input_at_trace_time(shape, dtype, cfg_kw, match):
    """Clear ValueError naming the shape / setting, raised while tracing under jit."""
    cfg = _cfg(**cfg_kw)
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda k, x: classic.degrade(k, x, cfg))(jax.random.PRNGKey(0),
                                                         jnp.zeros(shape, dtype))


def test_an_unknown_config_field_is_refused_not_ignored():
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['sigma_max'\]"):
        classic.resolve({"blur": "iso", "sigma_max": 2.0})
