"""Gaussian and Poisson noise of the Real-ESRGAN degradation (KDSR-GAN).

Implements reference/DEGRADATION.md §2.4 (BasicSR `random_add_gaussian_noise_pt` and
`random_add_poisson_noise_pt`, used in §2.2 steps 3 and 7), with explicit `jax.random`
keys and per-sample parameters:

* Gaussian: per-sample σ_b ~ U[lo, hi) (0–255 units) and gray flag g_b ~ Bernoulli(p).
  Colour noise N(0,1)·σ_b/255 i.i.d. per pixel and channel; the gray field N(0,1) of
  shape (H, W) is drawn once for the whole batch (BasicSR quirk: every gray-noise sample
  in a batch shares the same normalised pattern) and scaled per sample.
* Poisson: per-sample scale α_b and gray flag. The image is quantised to 8 bit,
  V_b = 2^ceil(log2(#distinct 8-bit values of sample b)), noise =
  Poisson(x_q·V_b)/V_b − x_q (gray: on 0.2989R + 0.587G + 0.114B, shared by the three
  channels), scaled by α_b and added to the unquantised image.
* The result is clipped to [0, 1] (no rounding), as in the training pipeline.

Canvas support: with `valid_hw=(h, w)` (traced int32 scalars allowed) the image is the
top-left h×w corner of a fixed canvas; the distinct-value count only looks at that
region and the output is zero outside it, so one compilation serves every size.

Poisson sampling: jax.random.poisson draws by Knuth's method / rejection loops that run
until every element is accepted, which takes tens of seconds for a 16×600×600×3 batch on
CPU. Here λ = x_q·V_b only takes 9 × 256 values (V_b ∈ {1, …, 256}, x_q = k/255), so
each pixel is drawn exactly by inverse-CDF sampling — one uniform per pixel and a
9-step binary search in a float32 CDF table computed once in float64 (counts
0…511; the mass beyond 511 at λ ≤ 256 is below 1e-30).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# §2.4: noise σ is in 0–255 units; images are 8-bit quantised for the Poisson levels.
PIXEL_MAX = 255.0
N_LEVELS = 256
# §2.4: torchvision rgb_to_grayscale weights used for gray Poisson noise.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
# Poisson CDF table: V_b = 2^e for e = 0..8, counts 0..POISSON_TABLE_WIDTH-1.
POISSON_MAX_EXPONENT = 8
POISSON_TABLE_WIDTH = 512


def _check_image(img, fn: str) -> None:
    shape = getattr(img, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{fn}: expected an RGB NHWC batch (B, H, W, 3), got shape {shape}")
    if not jnp.issubdtype(img.dtype, jnp.floating):
        raise ValueError(f"{fn}: expected a floating-point image, got dtype {img.dtype}")


def valid_mask(canvas_hw: Sequence[int], valid_hw) -> jax.Array:
    """(H, W, 1) bool mask of the top-left valid region of a canvas (traced sizes ok)."""
    rows = jnp.arange(canvas_hw[0]) < valid_hw[0]
    cols = jnp.arange(canvas_hw[1]) < valid_hw[1]
    return (rows[:, None] & cols[None, :])[..., None]


def _finish(out, valid_hw):
    out = jnp.clip(out, 0.0, 1.0)
    if valid_hw is not None:
        out = jnp.where(valid_mask(out.shape[1:3], valid_hw), out, 0.0)
    return out


def _per_sample(x):
    return x[:, None, None, None]


# --------------------------------------------------------------------------------------
# Gaussian noise.
# --------------------------------------------------------------------------------------

@jax.jit
def gaussian_noise(key, img, sigma, gray) -> jax.Array:
    """Noise field (B, H, W, 3) for per-sample σ (0–255 units) and gray flags (0/1)."""
    k_color, k_gray = jax.random.split(key)
    b, h, w, c = img.shape
    sigma = _per_sample(jnp.asarray(sigma, img.dtype)) / PIXEL_MAX
    gray = _per_sample(jnp.asarray(gray, img.dtype))
    color = jax.random.normal(k_color, (b, h, w, c), img.dtype) * sigma
    field = jax.random.normal(k_gray, (h, w), img.dtype)  # one field for the whole batch
    return color * (1 - gray) + field[None, :, :, None] * sigma * gray


def sample_gaussian_params(key, batch_size: int, sigma_range: Sequence[float],
                           gray_prob: float):
    """Per-sample σ ~ U[sigma_range) and gray flags (float 0/1), each (B,)."""
    k_sigma, k_gray = jax.random.split(key)
    sigma = jax.random.uniform(k_sigma, (batch_size,), jnp.float32, *sigma_range)
    gray = (jax.random.uniform(k_gray, (batch_size,)) < gray_prob).astype(jnp.float32)
    return sigma, gray


def add_gaussian_noise(key, img, sigma, gray, valid_hw=None) -> jax.Array:
    """img + Gaussian noise with the given per-sample parameters, clipped to [0, 1]."""
    _check_image(img, "noise.add_gaussian_noise")
    return _finish(img + gaussian_noise(key, img, sigma, gray), valid_hw)


def random_add_gaussian_noise(key, img, sigma_range: Sequence[float], gray_prob: float,
                              valid_hw=None) -> jax.Array:
    """BasicSR `random_add_gaussian_noise_pt(clip=True, rounds=False)` (§2.4)."""
    _check_image(img, "noise.random_add_gaussian_noise")
    return _random_gaussian(key, img, valid_hw, tuple(float(v) for v in sigma_range),
                            float(gray_prob))


@functools.partial(jax.jit, static_argnames=("sigma_range", "gray_prob"))
def _random_gaussian(key, img, valid_hw, sigma_range, gray_prob):
    k_params, k_noise = jax.random.split(key)
    sigma, gray = sample_gaussian_params(k_params, img.shape[0], sigma_range, gray_prob)
    return add_gaussian_noise(k_noise, img, sigma, gray, valid_hw)


# --------------------------------------------------------------------------------------
# Poisson noise.
# --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def poisson_cdf_table() -> np.ndarray:
    """float32 (9, 256, 512): P(X ≤ n) for X ~ Poisson(k/255 · 2^e), computed in float64.

    The last column is set to exactly 1 so that every uniform u < 1 finds a count.
    """
    n = np.arange(POISSON_TABLE_WIDTH, dtype=np.float64)
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(n[1:]))])
    levels = np.arange(N_LEVELS, dtype=np.float64) / PIXEL_MAX
    lam = levels[None, :, None] * (2.0 ** np.arange(POISSON_MAX_EXPONENT + 1))[:, None, None]
    safe_lam = np.where(lam > 0, lam, 1.0)
    log_pmf = n * np.log(safe_lam) - safe_lam - log_factorial
    pmf = np.where(lam > 0, np.exp(log_pmf), (n == 0).astype(np.float64))
    cdf = np.minimum(np.cumsum(pmf, axis=-1), 1.0)
    cdf[..., -1] = 1.0
    return cdf.astype(np.float32)


def level_exponent(levels: jax.Array, valid) -> jax.Array:
    """ceil(log2(#distinct levels)) per sample: levels int (B, N), valid bool (B, N)."""
    b = levels.shape[0]
    flat = (jnp.arange(b)[:, None] * N_LEVELS + levels).reshape(-1)
    counts = jnp.zeros((b * N_LEVELS,), jnp.int32).at[flat].add(
        valid.reshape(-1).astype(jnp.int32))
    distinct = jnp.sum(counts.reshape(b, N_LEVELS) > 0, axis=1)  # (B,), 1..256
    # ceil(log2(n)) = #{e in 0..7 : 2^e < n}, exact in integers.
    powers = 2 ** jnp.arange(POISSON_MAX_EXPONENT)
    return jnp.sum(powers[None, :] < distinct[:, None], axis=1)


def _quantised_levels(x):
    return jnp.clip(jnp.round(x * PIXEL_MAX), 0, PIXEL_MAX).astype(jnp.int32)


def _poisson_counts(key, levels, exponent):
    """Poisson(levels/255 · 2^exponent) by inverse CDF; levels int (B, H, W, C)."""
    table = jnp.asarray(poisson_cdf_table())
    flat = table.reshape(-1)
    base = (_per_sample(exponent) * N_LEVELS + levels) * POISSON_TABLE_WIDTH
    u = jax.random.uniform(key, levels.shape, jnp.float32)
    # Smallest n with F(n) >= u: binary search over [0, WIDTH).
    lo = jnp.zeros(levels.shape, jnp.int32)
    step = POISSON_TABLE_WIDTH // 2
    while step >= 1:
        probe = lo + step - 1
        lo = jnp.where(flat[base + probe] < u, lo + step, lo)
        step //= 2
    return lo


@jax.jit
def poisson_noise(key, img, gray, valid_hw=None) -> jax.Array:
    """Unscaled Poisson noise (B, H, W, 3) for per-sample gray flags (§2.4)."""
    k_color, k_gray = jax.random.split(key)
    b, h, w, _ = img.shape
    valid = (jnp.ones((h, w, 1), bool) if valid_hw is None
             else valid_mask((h, w), valid_hw))

    def one(k, x):
        levels = _quantised_levels(x)
        exponent = level_exponent(
            levels.reshape(b, -1), jnp.broadcast_to(valid, levels.shape).reshape(b, -1))
        v = _per_sample(2.0 ** exponent.astype(img.dtype))
        counts = _poisson_counts(k, levels, exponent).astype(img.dtype)
        x_q = levels.astype(img.dtype) / PIXEL_MAX
        return counts / v - x_q

    noise_color = one(k_color, img)
    weights = jnp.asarray(GRAY_WEIGHTS, img.dtype)
    y = (img[..., 0] * weights[0] + img[..., 1] * weights[1] + img[..., 2] * weights[2])
    noise_gray = one(k_gray, y[..., None])
    gray = _per_sample(jnp.asarray(gray, img.dtype))
    return noise_color * (1 - gray) + noise_gray * gray


def sample_poisson_params(key, batch_size: int, scale_range: Sequence[float],
                          gray_prob: float):
    """Per-sample scale α ~ U[scale_range) and gray flags (float 0/1), each (B,)."""
    k_scale, k_gray = jax.random.split(key)
    scale = jax.random.uniform(k_scale, (batch_size,), jnp.float32, *scale_range)
    gray = (jax.random.uniform(k_gray, (batch_size,)) < gray_prob).astype(jnp.float32)
    return scale, gray


def add_poisson_noise(key, img, scale, gray, valid_hw=None) -> jax.Array:
    """img + α_b · Poisson noise with the given per-sample parameters, clipped to [0, 1]."""
    _check_image(img, "noise.add_poisson_noise")
    noise = poisson_noise(key, img, gray, valid_hw)
    return _finish(img + noise * _per_sample(jnp.asarray(scale, img.dtype)), valid_hw)


def random_add_poisson_noise(key, img, scale_range: Sequence[float], gray_prob: float,
                             valid_hw=None) -> jax.Array:
    """BasicSR `random_add_poisson_noise_pt(clip=True, rounds=False)` (§2.4)."""
    _check_image(img, "noise.random_add_poisson_noise")
    return _random_poisson(key, img, valid_hw, tuple(float(v) for v in scale_range),
                           float(gray_prob))


@functools.partial(jax.jit, static_argnames=("scale_range", "gray_prob"))
def _random_poisson(key, img, valid_hw, scale_range, gray_prob):
    k_params, k_noise = jax.random.split(key)
    scale, gray = sample_poisson_params(k_params, img.shape[0], scale_range, gray_prob)
    return add_poisson_noise(k_noise, img, scale, gray, valid_hw)
