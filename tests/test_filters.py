"""Tests for kdsr_jax.degradation.filters.filter2d (BasicSR filter2D / classic BatchBlur)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdsr_jax.degradation import filters

from conftest import to_nhwc

# Fixture README "How to compare": 21x21 blurs 5e-6, short filters 1e-6.
TOL_LONG = 5e-6
TOL_SHORT = 1e-6


@pytest.fixture(scope="module")
def fx(fixtures_dir):
    return np.load(fixtures_dir / "basicsr_filter2d.npz")


def _reference(img, kernels):
    """Plain NumPy float64 reflect-pad + correlation, one kernel per image."""
    b, h, w, c = img.shape
    k = kernels.shape[-1]
    p = k // 2
    pad = np.pad(img.astype(np.float64), ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
    out = np.zeros((b, h, w, c))
    for i in range(b):
        ker = kernels[i if kernels.shape[0] > 1 else 0].astype(np.float64)
        for r in range(k):
            for q in range(k):
                out[i] += ker[r, q] * pad[i, r:r + h, q:q + w]
    return out


@pytest.mark.parametrize("path", ["row_split", "direct_conv"])
@pytest.mark.parametrize("name,tol", [("shared", TOL_LONG), ("batch", TOL_LONG),
                                      ("k7", TOL_SHORT), ("asym", TOL_SHORT)])
def test_filter2d_matches_basicsr_filter2d_fixture(fx, name, tol, path, monkeypatch):
    """basicsr_filter2d.npz out_<name> within 5e-6 (21x21) / 1e-6 (7x7, 5x5 asymmetric),
    on both implementation paths (the direct conv is used for very large jobs)."""
    if path == "direct_conv":
        monkeypatch.setattr(filters, "ROWS_MAX_BYTES", 0)
    out = jax.jit(filters.filter2d)(jnp.asarray(to_nhwc(fx["in_img"])), fx[f"kernel_{name}"])
    err = np.abs(np.asarray(out) - to_nhwc(fx[f"out_{name}"])).max()
    assert err <= tol, f"{name}: max abs error {err}"


def test_filter2d_accepts_unbatched_and_repeated_shared_kernel(fx):
    """(k, k), (1, k, k) and B identical copies give the same result (basicsr fixture)."""
    img = jnp.asarray(to_nhwc(fx["in_img"]))
    ker = fx["kernel_shared"]
    ref = to_nhwc(fx["out_shared"])
    for kernels in (ker[0], ker, np.repeat(ker, img.shape[0], axis=0)):
        err = np.abs(np.asarray(filters.filter2d(img, kernels)) - ref).max()
        assert err <= TOL_LONG, f"kernel shape {kernels.shape}: {err}"


def test_filter2d_is_per_image_cross_correlation_with_mirror_padding():
    """Against a float64 NumPy loop: no kernel flip, edge not repeated, kernel i -> image i."""
    rng = np.random.default_rng(0)
    img = rng.uniform(size=(3, 9, 13, 2)).astype(np.float32)
    kernels = rng.uniform(-1, 1, size=(3, 5, 5)).astype(np.float32)
    out = np.asarray(filters.filter2d(jnp.asarray(img), kernels))
    np.testing.assert_allclose(out, _reference(img, kernels), atol=TOL_SHORT, rtol=0)
    shared = np.asarray(filters.filter2d(jnp.asarray(img), kernels[1]))
    np.testing.assert_allclose(shared, _reference(img, kernels[1:2]), atol=TOL_SHORT, rtol=0)


def test_filter2d_identity_kernel_returns_input():
    """A centred delta kernel leaves the image unchanged (output size = input size)."""
    img = jax.random.uniform(jax.random.PRNGKey(1), (2, 12, 15, 3))
    delta = jnp.zeros((21, 21)).at[10, 10].set(1.0)
    out = filters.filter2d(img, delta)
    assert out.shape == img.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


@pytest.mark.parametrize("img_shape,ker_shape,match", [
    ((12, 12, 3), (5, 5), r"\(B, H, W, C\).*\(12, 12, 3\)"),
    ((2, 12, 12, 3), (4, 4), r"odd.*\(4, 4\)"),
    ((2, 12, 12, 3), (3, 5, 5), r"3 kernels for a batch of 2"),
    ((2, 12, 12, 3), (5, 7), r"\(5, 7\)"),
    ((2, 10, 40, 3), (21, 21), r"10x40.*\(2, 10, 40, 3\).*> 10"),
])
def test_filter2d_rejects_bad_shapes_with_clear_error(img_shape, ker_shape, match):
    """Wrong rank, even/non-square kernels, kernel-batch mismatch, too small for padding."""
    with pytest.raises(ValueError, match=match):
        filters.filter2d(jnp.zeros(img_shape), jnp.ones(ker_shape))


def test_filter2d_rejects_integer_images():
    """uint8 images are refused (convert to float in [0, 1] first)."""
    with pytest.raises(ValueError, match=r"float.*uint8"):
        filters.filter2d(jnp.zeros((1, 12, 12, 3), jnp.uint8), jnp.ones((3, 3)))
