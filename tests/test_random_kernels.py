"""Tests for kdsr_jax.degradation.random_kernels (reference/DEGRADATION.md §2.1)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from kdsr_jax.degradation import random_kernels as rk

# fixtures/README.md "How to compare": float32 kernels max abs <= 1e-7; basicsr float64
# kernels rtol 1e-12 when computed in float64.
FLOAT32_ATOL = 1e-7
FLOAT64_RTOL = 1e-12
# XLA on CPU flushes subnormal floats to zero, so values below the smallest normal
# float64 (~2.2e-308) cannot be reproduced; every normal value is held to rtol 1e-12.
FLOAT64_ATOL = np.finfo(np.float64).tiny

_BASE_FUNCTIONS = {
    "bivariate_Gaussian": rk.bivariate_gaussian,
    "bivariate_generalized_Gaussian": rk.bivariate_generalized_gaussian,
    "bivariate_plateau": rk.bivariate_plateau,
    "circular_lowpass_kernel": rk.circular_lowpass_kernel,
    "sigma_matrix2": rk.sigma_matrix,
    "mesh_grid": lambda k: (rk.mesh_grid(k),),
}


def _load(fixtures_dir, name):
    z = np.load(fixtures_dir / f"{name}.npz")
    return z, json.loads(str(z["config_json"]))


def _run_call(call: str):
    """Evaluate a fixture's recorded call, e.g. `bivariate_plateau(15, 2.0, ...)`."""
    call = call.split(" (")[0]
    return np.asarray(eval(call, dict(_BASE_FUNCTIONS)))


def test_j1_matches_scipy_in_float64_and_float32():
    x = np.linspace(0.0, 60.0, 20001)
    with jax.enable_x64(True):
        got64 = np.asarray(rk.j1(jnp.asarray(x)))
    assert got64.dtype == np.float64
    np.testing.assert_allclose(got64, scipy.special.j1(x), rtol=0, atol=3e-15)
    x32 = x.astype(np.float32)
    got32 = np.asarray(rk.j1(jnp.asarray(x32)))
    assert got32.dtype == np.float32
    # float32: limited by the rounding of x·sin τ, i.e. proportional to x.
    err = np.abs(got32 - scipy.special.j1(x32.astype(np.float64)))
    assert np.all(err <= 1.5e-7 * (1 + x / 10)), err.max()


def test_basicsr_kernels_float64_match_fixture_rtol_1e12(fixtures_dir):
    """basicsr_kernels.npz float64 outputs, rtol 1e-12, computed by the jnp code in x64."""
    z, cfg = _load(fixtures_dir, "basicsr_kernels")
    assert len(cfg["calls"]) == 13
    with jax.enable_x64(True):
        for key, call in cfg["calls"].items():
            got = _run_call(call)
            assert got.dtype == np.float64, key
            np.testing.assert_allclose(got, z[key], rtol=FLOAT64_RTOL, atol=FLOAT64_ATOL,
                                       err_msg=key)


def test_basicsr_kernels_float32_match_fixture_copies_1e7(fixtures_dir):
    """basicsr_kernels.npz `<key>__float32` copies, max abs <= 1e-7, float32 compute."""
    z, cfg = _load(fixtures_dir, "basicsr_kernels")
    checked = 0
    for key, call in cfg["calls"].items():
        if f"{key}__float32" not in z.files:
            continue
        got = _run_call(call)
        assert got.dtype == np.float32, key
        ref = z[f"{key}__float32"]
        assert got.shape == ref.shape, key
        assert np.max(np.abs(got - ref)) <= FLOAT32_ATOL, (key, np.max(np.abs(got - ref)))
        checked += 1
    assert checked == 11


def _fixture_type_index(sample):
    family = {"bivariate_Gaussian": "", "bivariate_generalized_Gaussian": "generalized_",
              "bivariate_plateau": "plateau_"}[sample["fn"]]
    return rk.KERNEL_TYPES.index(family + ("iso" if sample["isotropic"] else "aniso"))


def _mixed_from_sample(sample):
    beta = 1.0 if sample["beta"] is None else sample["beta"]
    kernel21 = rk.mixed_kernel(_fixture_type_index(sample), sample["kernel_size"],
                               sample["sig_x"], sample["sig_y"], sample["theta"], beta)
    return np.asarray(kernel21)


def test_random_mixed_kernels_reproduced_from_recorded_parameters_1e7(fixtures_dir):
    """basicsr_random_mixed_kernels.npz: the traced-size 21x21 kernel, cropped to the
    recorded size, matches kernel_%02d (float32 compute, max abs <= 1e-7) and is exactly
    zero outside that size."""
    z, cfg = _load(fixtures_dir, "basicsr_random_mixed_kernels")
    assert len(cfg["samples"]) == 12
    for sample in cfg["samples"]:
        ref = z["kernel_%02d" % sample["index"]]
        k = sample["kernel_size"]
        p = (rk.PAD_SIZE - k) // 2
        got21 = _mixed_from_sample(sample)
        assert got21.dtype == np.float32
        got = got21[p:p + k, p:p + k]
        assert np.max(np.abs(got - ref)) <= FLOAT32_ATOL, (sample["index"],
                                                             np.max(np.abs(got - ref)))
        outside = got21.copy()
        outside[p:p + k, p:p + k] = 0
        assert not outside.any()


def test_random_mixed_kernels_float64_match_fixture_rtol_1e12(fixtures_dir):
    """basicsr_random_mixed_kernels.npz in x64: same jnp path, rtol 1e-12."""
    z, cfg = _load(fixtures_dir, "basicsr_random_mixed_kernels")
    with jax.enable_x64(True):
        for sample in cfg["samples"]:
            k = sample["kernel_size"]
            p = (rk.PAD_SIZE - k) // 2
            got = _mixed_from_sample(sample)[p:p + k, p:p + k]
            assert got.dtype == np.float64
            np.testing.assert_allclose(got, z["kernel_%02d" % sample["index"]],
                                       rtol=FLOAT64_RTOL, atol=FLOAT64_ATOL)


def test_traced_size_sinc_equals_padded_fixed_size_sinc():
    for k in rk.KERNEL_SIZES:
        fixed = rk.circular_lowpass_kernel(2.1, k, pad_to=rk.PAD_SIZE)
        traced = jax.jit(rk.sinc_kernel)(2.1, k)
        np.testing.assert_allclose(np.asarray(traced), np.asarray(fixed), rtol=0, atol=1e-7)


def test_sinc_centre_is_cutoff_squared_over_4pi_before_normalisation():
    cutoff = 2.0
    raw = rk._sinc_values(cutoff, jnp.asarray([0.0, 1.0]))
    assert float(raw[0]) == pytest.approx(cutoff ** 2 / (4 * math.pi), rel=1e-7)
    # continuity: the limit of ω J1(ω r)/(2π r) at r -> 0 is the same value.
    assert float(rk._sinc_values(cutoff, jnp.asarray(1e-3))) == pytest.approx(
        cutoff ** 2 / (4 * math.pi), rel=1e-5)


def test_bad_kernel_size_raises_value_error():
    with pytest.raises(ValueError, match="odd"):
        rk.mesh_grid(8)
    with pytest.raises(ValueError, match="even"):
        rk.circular_lowpass_kernel(1.0, 7, pad_to=20)


# ----------------------------------------------------------------------------------
# Random sampling: statistical checks with fixed keys.
# ----------------------------------------------------------------------------------

N_DRAWS = 4000


def _binomial_ok(count, n, p, z=5.0):
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


def test_random_mixed_params_follow_yml_probabilities_and_ranges():
    keys = jax.random.split(jax.random.key(0), N_DRAWS)
    params = jax.vmap(lambda k: rk.random_mixed_params(k, (0.2, 3.0), (0.5, 4.0),
                                                       (1.0, 2.0)))(keys)
    params = {k: np.asarray(v) for k, v in params.items()}
    types = params["kernel_type"]
    for i, p in enumerate(rk.KERNEL_PROBS):
        assert _binomial_ok(np.sum(types == i), N_DRAWS, p), (rk.KERNEL_TYPES[i],
                                                             np.sum(types == i))
    assert np.all((params["sig_x"] >= 0.2) & (params["sig_x"] < 3.0))
    iso = np.isin(types, [0, 2, 4])
    assert np.all(params["sig_y"][iso] == params["sig_x"][iso])
    assert np.all(params["theta"][iso] == 0)
    aniso = ~iso
    assert np.all((params["sig_y"][aniso] >= 0.2) & (params["sig_y"][aniso] < 3.0))
    theta = params["theta"][aniso]
    assert np.all((theta >= -math.pi) & (theta < math.pi))
    assert theta.min() < -2.5 and theta.max() > 2.5
    assert np.all(params["beta"][types <= 1] == 1.0)
    beta_g = params["beta"][(types == 2) | (types == 3)]
    assert np.all((beta_g >= 0.5) & (beta_g < 4.0))
    assert _binomial_ok(np.sum(beta_g < 1), beta_g.size, 0.5)
    beta_p = params["beta"][(types == 4) | (types == 5)]
    # betap_range [1, 2]: the "below one" branch is U[1, 1) = 1 exactly.
    assert np.all((beta_p >= 1.0) & (beta_p < 2.0))
    assert _binomial_ok(np.sum(beta_p == 1.0), beta_p.size, 0.5)


def _support_sizes(kernels):
    nonzero = np.abs(kernels).sum(axis=1) > 0  # (N, 21) columns with a nonzero entry
    return nonzero.sum(axis=1)


def test_random_blur_kernels_sizes_sinc_probability_and_normalisation():
    keys = jax.random.split(jax.random.key(1), N_DRAWS)
    kernels = np.asarray(jax.jit(jax.vmap(lambda k: rk.random_blur_kernel(
        k, (0.2, 3.0), (0.5, 4.0), (1.0, 2.0), 0.1)))(keys))
    assert kernels.shape == (N_DRAWS, 21, 21) and kernels.dtype == np.float32
    np.testing.assert_allclose(kernels.sum(axis=(1, 2)), 1.0, atol=1e-5)
    sizes = _support_sizes(kernels)
    for k in rk.KERNEL_SIZES:
        assert _binomial_ok(np.sum(sizes == k), N_DRAWS, 1 / 8), (k, np.sum(sizes == k))
    # Only sinc kernels have negative entries, and with the §2.1 cutoff ranges every
    # sinc kernel reaches past the first zero of J1 (r = 3.83/ω_c) inside its support.
    has_negative = (kernels < 0).any(axis=(1, 2))
    assert _binomial_ok(has_negative.sum(), N_DRAWS, 0.1), has_negative.sum()


def test_random_sinc_kernel_is_identity_with_prob_point_two():
    keys = jax.random.split(jax.random.key(2), N_DRAWS)
    kernels = np.asarray(jax.jit(jax.vmap(lambda k: rk.random_sinc_kernel(k, 0.8)))(keys))
    pulse = np.asarray(rk.pulse_kernel())
    is_pulse = np.all(kernels == pulse, axis=(1, 2))
    assert _binomial_ok(is_pulse.sum(), N_DRAWS, 0.2)
    np.testing.assert_allclose(kernels.sum(axis=(1, 2)), 1.0, atol=1e-5)
    sizes = _support_sizes(kernels[~is_pulse])
    for k in rk.KERNEL_SIZES:
        assert _binomial_ok(np.sum(sizes == k), sizes.size, 1 / 8), k


def test_sample_kernels_shapes_and_per_sample_variation():
    class Cfg:
        blur_sigma, betag_range, betap_range, sinc_prob = (0.2, 3), (0.5, 4), (1, 2), 0.1
        blur_sigma2, betag_range2, betap_range2, sinc_prob2 = (0.2, 1.5), (0.5, 4), (1, 2), 0.1
        final_sinc_prob = 0.8
        kernel_prob = kernel_prob2 = rk.KERNEL_PROBS
        kernel_list = kernel_list2 = rk.KERNEL_TYPES
        kernel_range = rk.KERNEL_SIZES

    out = jax.jit(lambda k: rk.sample_kernels(k, 6, Cfg))(jax.random.key(3))
    assert set(out) == {"kernel1", "kernel2", "sinc_kernel"}
    for name, v in out.items():
        assert v.shape == (6, 21, 21) and v.dtype == jnp.float32, name
    k1 = np.asarray(out["kernel1"])
    assert len({k1[i].tobytes() for i in range(6)}) == 6


def _types(kernel_list, kernel_prob, n=256):
    keys = jax.random.split(jax.random.key(7), n)
    params = jax.vmap(lambda k: rk.random_mixed_params(
        k, (0.2, 3.0), (0.5, 4.0), (1.0, 2.0), kernel_prob, kernel_list))(keys)
    return np.asarray(params["kernel_type"])


def test_kernel_type_is_chosen_from_kernel_list_by_kernel_prob_as_basicsr():
    """random.choices(kernel_list, kernel_prob): the probabilities go with the listed
    names, in the order given, not with a fixed internal order."""
    reordered = ["aniso", "iso", "generalized_iso", "generalized_aniso", "plateau_iso",
                 "plateau_aniso"]
    types = _types(reordered, [1, 0, 0, 0, 0, 0])
    assert np.all(types == rk.KERNEL_TYPES.index("aniso"))
    single = _types(["iso"], [1.0])
    assert np.all(single == rk.KERNEL_TYPES.index("iso"))
    two = _types(["plateau_aniso", "generalized_iso"], [0.5, 0.5])
    assert set(two.tolist()) == {rk.KERNEL_TYPES.index("plateau_aniso"),
                                 rk.KERNEL_TYPES.index("generalized_iso")}


def test_default_kernel_list_keeps_the_draws_of_the_yml_order():
    keys = jax.random.split(jax.random.key(8), 64)
    a = jax.vmap(lambda k: rk.random_mixed_params(k, (0.2, 3.0), (0.5, 4.0), (1.0, 2.0)))(keys)
    b = jax.vmap(lambda k: rk.random_mixed_params(k, (0.2, 3.0), (0.5, 4.0), (1.0, 2.0),
                                                  rk.KERNEL_PROBS, rk.KERNEL_TYPES))(keys)
    np.testing.assert_array_equal(np.asarray(a["kernel_type"]), np.asarray(b["kernel_type"]))


def test_kernel_range_sets_the_sizes_of_blur_and_final_sinc_kernels():
    keys = jax.random.split(jax.random.key(9), 128)
    # sinc_prob 1: sinc kernels fill their support (a narrow Gaussian underflows to 0
    # near its border, so its support cannot be read off the values).
    blur = np.asarray(jax.vmap(lambda k: rk.random_blur_kernel(
        k, (0.2, 3.0), (0.5, 4.0), (1.0, 2.0), 1.0, kernel_range=(7, 21)))(keys))
    assert set(_support_sizes(blur).tolist()) == {7, 21}
    sinc = np.asarray(jax.vmap(lambda k: rk.random_sinc_kernel(k, 1.0, (9, 13)))(keys))
    assert set(_support_sizes(sinc).tolist()) == {9, 13}


def test_unknown_kernel_type_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown kernel type"):
        rk.random_mixed_params(jax.random.key(0), (0.2, 3.0), (0.5, 4.0), (1.0, 2.0),
                               [1.0], ["gauss"])
