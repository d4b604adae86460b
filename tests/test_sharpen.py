"""Tests for kdsr_jax.degradation.sharpen (BasicSR USMSharp)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdsr_jax.degradation import sharpen

from conftest import load_npz, to_nhwc

# Fixture README: float32 kernels max abs <= 1e-7; "USM's 51x51 blur": 1e-5.
KERNEL_TOL = 1e-7
USM_TOL = 1e-5


@pytest.fixture(scope="module")
def usm_fixture(fixtures_dir):
    return load_npz(fixtures_dir / "basicsr_usmsharp.npz")


def test_kernel_matches_basicsr_usmsharp_fixture_within_1e7(usm_fixture):
    """basicsr_usmsharp.npz kernel: outer product of cv2.getGaussianKernel(51, 0)."""
    kernel = sharpen.usm_kernel()
    assert kernel.shape == (51, 51) and kernel.dtype == np.float32
    np.testing.assert_allclose(kernel, usm_fixture["kernel"][0], atol=KERNEL_TOL, rtol=1e-5)


def test_opencv_sigma_rule_gives_sigma_8_for_51_taps():
    g = sharpen.gaussian_1d(51)
    # log g(x) = c - x^2 / (2 sigma^2): the step from the centre to x = 1 gives sigma.
    sigma = np.sqrt(-1.0 / (2.0 * np.log(g[26] / g[25])))
    assert abs(sigma - 8.0) < 1e-9
    assert abs(g.sum() - 1.0) < 1e-12 and np.argmax(g) == 25


@pytest.mark.parametrize("method", sharpen.METHODS)
def test_blur_and_outputs_match_basicsr_usmsharp_fixture_within_1e5(usm_fixture, method):
    """basicsr_usmsharp.npz blur, out_default (0.5, 10), out_w1_t5 (1.0, 5) at 1e-5."""
    x = jnp.asarray(to_nhwc(usm_fixture["in_x"]))
    blur = sharpen.blur(x, method=method)
    np.testing.assert_allclose(np.asarray(blur), to_nhwc(usm_fixture["blur"]), atol=USM_TOL, rtol=0)
    out = sharpen.usm(x, method=method)
    np.testing.assert_allclose(np.asarray(out), to_nhwc(usm_fixture["out_default"]),
                               atol=USM_TOL, rtol=0)
    out = sharpen.usm(x, weight=1.0, threshold=5, method=method)
    np.testing.assert_allclose(np.asarray(out), to_nhwc(usm_fixture["out_w1_t5"]),
                               atol=USM_TOL, rtol=0)


def test_separable_blur_equals_2d_filter_on_odd_sizes():
    x = jax.random.uniform(jax.random.key(0), (2, 29, 40, 3))
    a = sharpen.blur(x, method="separable")
    b = sharpen.blur(x, method="filter2d")
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=0)


def test_flat_image_is_unchanged_and_output_stays_in_unit_range_up_to_rounding():
    flat = jnp.full((1, 32, 32, 3), 0.4, jnp.float32)
    np.testing.assert_allclose(np.asarray(sharpen.usm(flat)), 0.4, atol=1e-6)
    x = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3))
    out = sharpen.usm(x, weight=2.0, threshold=0)
    # A convex mix of two [0, 1] images, up to float32 rounding of the blurred mask.
    assert float(out.min()) >= -1e-6 and float(out.max()) <= 1.0 + 1e-6


def test_weight_and_threshold_can_be_traced():
    x = jax.random.uniform(jax.random.key(2), (1, 30, 30, 3))
    fn = jax.jit(lambda img, w, t: sharpen.usm(img, w, t))
    np.testing.assert_allclose(np.asarray(fn(x, 0.5, 10.0)), np.asarray(sharpen.usm(x)),
                               atol=1e-7)


def test_bad_inputs_raise_clear_value_errors():
    with pytest.raises(ValueError, match="rank 4"):
        sharpen.usm(jnp.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match="dtype"):
        sharpen.usm(jnp.zeros((1, 32, 32, 3), jnp.uint8))
    with pytest.raises(ValueError, match="too small"):
        sharpen.usm(jnp.zeros((1, 20, 32, 3)))
    with pytest.raises(ValueError, match="unknown method"):
        sharpen.usm(jnp.zeros((1, 32, 32, 3)), method="fft")
