"""Tests for kdsr_jax.degradation.noise (reference/DEGRADATION.md §2.4).

The official noise is torch's RNG itself (fixtures/README.md: no fixtures), so these
are statistical checks with fixed keys; bounds are ≥ 5 standard errors wide.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from kdsr_jax.degradation import noise

H = W = 96


def _const(levels, h=H, w=W):
    """(B, h, w, 3) images, image b constant at 8-bit level levels[b]."""
    lv = np.asarray(levels, np.float32)[:, None, None, None] / 255.0
    return jnp.asarray(np.broadcast_to(lv, (len(levels), h, w, 3)).copy())


# --------------------------------------------------------------------------------------
# Gaussian
# --------------------------------------------------------------------------------------

def test_gaussian_noise_std_per_sample_colour_and_gray():
    img = _const([128, 128, 128])
    sigma = jnp.asarray([5.0, 20.0, 12.0])
    gray = jnp.asarray([0.0, 1.0, 1.0])
    n = np.asarray(noise.gaussian_noise(jax.random.key(0), img, sigma, gray))
    count = H * W * 3
    for b, s in enumerate([5.0, 20.0, 12.0]):
        assert abs(n[b].mean()) < 5 * s / 255 / np.sqrt(H * W)
        assert abs(n[b].std() / (s / 255) - 1) < 5 * np.sqrt(0.5 / (H * W))
    # colour sample: channels independent
    c = np.corrcoef(n[0].reshape(-1, 3).T)
    assert np.all(np.abs(c[np.triu_indices(3, 1)]) < 5 / np.sqrt(H * W))
    # gray samples: identical over channels, and the SAME normalised field (BasicSR quirk)
    np.testing.assert_array_equal(n[1][..., 0], n[1][..., 1])
    np.testing.assert_array_equal(n[1][..., 0], n[1][..., 2])
    np.testing.assert_allclose(n[1] / 20.0, n[2] / 12.0, rtol=1e-5, atol=1e-8)
    del count


def test_random_gaussian_noise_clips_and_draws_per_sample_parameters():
    img = _const([0, 255] * 50, h=8, w=8)
    out = np.asarray(noise.random_add_gaussian_noise(jax.random.key(1), img, (1, 30), 0.4))
    assert out.min() >= 0 and out.max() <= 1
    assert (out == 0).any() and (out == 1).any()  # clipped at both ends
    sigma, gray = noise.sample_gaussian_params(jax.random.key(2), 4000, (1, 30), 0.4)
    sigma, gray = np.asarray(sigma), np.asarray(gray)
    assert sigma.min() >= 1 and sigma.max() < 30 and abs(sigma.mean() - 15.5) < 0.5
    assert set(np.unique(gray)) == {0.0, 1.0} and abs(gray.mean() - 0.4) < 0.04


def test_gaussian_noise_on_canvas_is_zero_outside_valid_region():
    img = _const([100, 100])
    out = np.asarray(noise.add_gaussian_noise(jax.random.key(3), img, jnp.asarray([9., 9.]),
                                              jnp.asarray([0., 1.]),
                                              valid_hw=(jnp.int32(40), jnp.int32(70))))
    assert not out[:, 40:].any() and not out[:, :, 70:].any()
    assert np.all(out[:, :40, :70] > 0)


# --------------------------------------------------------------------------------------
# Poisson
# --------------------------------------------------------------------------------------

def test_poisson_cdf_table_matches_scipy():
    table = noise.poisson_cdf_table()
    assert table.shape == (9, 256, noise.POISSON_TABLE_WIDTH) and table.dtype == np.float32
    assert np.all(np.diff(table, axis=-1) >= 0) and np.all(table[..., -1] == 1)
    n = np.arange(noise.POISSON_TABLE_WIDTH)
    for e, k in [(0, 255), (3, 17), (8, 255), (8, 1), (5, 128)]:
        lam = k / 255 * 2.0 ** e
        np.testing.assert_allclose(table[e, k, :-1], scipy.stats.poisson.cdf(n[:-1], lam),
                                   rtol=0, atol=3e-7)


@pytest.mark.parametrize("n_distinct, exponent", [(1, 0), (2, 1), (3, 2), (5, 3), (8, 3),
                                                  (9, 4), (129, 8), (256, 8)])
def test_level_exponent_is_ceil_log2_of_distinct_levels(n_distinct, exponent):
    levels = np.zeros((1, 400), np.int32)
    levels[0, :n_distinct] = np.arange(n_distinct) * (255 // max(n_distinct - 1, 1))
    if n_distinct == 256:
        levels[0, :256] = np.arange(256)
    assert len(np.unique(levels)) == n_distinct
    got = noise.level_exponent(jnp.asarray(levels), jnp.ones((1, 400), bool))
    assert int(got[0]) == exponent


def test_level_exponent_counts_only_the_valid_region():
    levels = np.zeros((2, 10), np.int32)
    levels[:, :4] = [[10, 20, 30, 40], [5, 5, 5, 5]]   # valid part: 4 and 1 distinct
    valid = np.zeros((2, 10), bool)
    valid[:, :4] = True
    got = noise.level_exponent(jnp.asarray(levels), jnp.asarray(valid))
    np.testing.assert_array_equal(np.asarray(got), [2, 0])


def _poisson_image():
    """One image: levels 0..199 once each in the first row block, the rest at 200.

    201 distinct levels -> V = 256, so the big region has λ = 200/255·256 ≈ 200.8.
    """
    lv = np.full((1, H, W, 3), 200, np.float32)
    lv.reshape(-1)[:200] = np.arange(200)
    return jnp.asarray(lv / 255.0)


def test_poisson_counts_follow_poisson_distribution_at_image_levels():
    img = _poisson_image()
    n = np.asarray(noise.poisson_noise(jax.random.key(4), img, jnp.zeros((1,))))
    x_q = 200 / 255
    counts = np.round((n.reshape(-1)[200:] + x_q) * 256).astype(int)
    lam = x_q * 256
    m = counts.size
    assert abs(counts.mean() - lam) < 5 * np.sqrt(lam / m)
    assert abs(counts.var() / lam - 1) < 5 * np.sqrt(2 / m)
    # per-count frequencies vs the pmf (chi-square over bins with >= 20 expected)
    values, observed = np.unique(counts, return_counts=True)
    expected = scipy.stats.poisson.pmf(values, lam) * m
    keep = expected >= 20
    chi2 = np.sum((observed[keep] - expected[keep]) ** 2 / expected[keep])
    assert scipy.stats.chi2.sf(chi2, keep.sum() - 1) > 1e-4


def test_poisson_small_levels_use_few_distinct_values():
    # Two distinct levels -> V = 2: lam = x_q * 2 and the noise is a multiple of 1/2.
    img = _const([0, 51])
    img = img.at[:, :H // 2].set(153 / 255)
    n = np.asarray(noise.poisson_noise(jax.random.key(5), img, jnp.zeros((2,))))
    x_q = np.asarray(jnp.round(img * 255) / 255)
    counts = (n + x_q) * 2
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-4)
    big = counts[1, H // 2:].reshape(-1)  # level 51 region: λ = 0.4
    assert abs(big.mean() - 0.4) < 5 * np.sqrt(0.4 / big.size)


def test_gray_poisson_noise_uses_luma_weights_and_is_shared_by_channels():
    rgb = np.zeros((1, H, W, 3), np.float32)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0.9, 0.3, 0.1
    rgb.reshape(-1, 3)[:100, 0] = np.arange(100) / 255.0  # a few extra gray levels
    img = jnp.asarray(rgb)
    n = np.asarray(noise.poisson_noise(jax.random.key(6), img, jnp.ones((1,))))
    np.testing.assert_array_equal(n[..., 0], n[..., 1])
    np.testing.assert_array_equal(n[..., 0], n[..., 2])
    # Independent numpy model: torchvision luma, 8-bit levels, V = 2^ceil(log2(#levels)).
    y = rgb[0] @ np.array([0.2989, 0.587, 0.114], np.float32)
    y_levels = np.round(y * 255)
    v = 2.0 ** np.ceil(np.log2(len(np.unique(y_levels))))
    y_q = y_levels[10:, 0] / 255  # the constant region
    region = n[0, 10:, :, 0]
    counts = (region + y_q[:, None]) * v
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # lattice 1/V
    lam = y_q[0] * v
    assert abs(counts.mean() - lam) < 5 * np.sqrt(lam / counts.size)
    assert abs(counts.var() / lam - 1) < 5 * np.sqrt(2 / counts.size)


def test_random_poisson_noise_scales_and_clips_on_canvas():
    img = _poisson_image()
    img = jnp.concatenate([img, img])
    scale = jnp.asarray([0.5, 2.0])
    out = noise.add_poisson_noise(jax.random.key(7), img, scale, jnp.zeros((2,)))
    d = np.asarray(out - img).reshape(2, -1)[:, 200:]
    ratio = d[1].std() / d[0].std()
    assert abs(ratio - 4.0) < 0.2
    out = np.asarray(noise.random_add_poisson_noise(
        jax.random.key(8), img, (0.05, 3.0), 0.4, valid_hw=(jnp.int32(50), jnp.int32(60))))
    assert out.min() >= 0 and out.max() <= 1
    assert not out[:, 50:].any() and not out[:, :, 60:].any()


def test_bad_noise_input_raises_value_error_naming_the_shape():
    with pytest.raises(ValueError, match=r"\(4, 4, 3\)"):
        noise.add_gaussian_noise(jax.random.key(0), jnp.zeros((4, 4, 3)), 1.0, 0.0)
    with pytest.raises(ValueError, match="dtype int32"):
        noise.add_poisson_noise(jax.random.key(0), jnp.zeros((1, 4, 4, 3), jnp.int32),
                                jnp.ones(1), jnp.zeros(1))
