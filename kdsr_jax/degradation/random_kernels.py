"""Random blur and sinc kernels of the Real-ESRGAN degradation used by KDSR-GAN.

Implements the kernel generation of the KDSR-GAN dataset (`RealESRGANDataset`,
BasicSR 1.4.2 `random_mixed_kernels` / `circular_lowpass_kernel` semantics), in jnp:

* fixed-size building blocks with the BasicSR definitions (`mesh_grid`, `sigma_matrix`,
  `bivariate_gaussian`, `bivariate_generalized_gaussian`, `bivariate_plateau`,
  `circular_lowpass_kernel`), checked against float64 BasicSR outputs;
* a Bessel J1 (`j1`) of our own: the midpoint rule on Bessel's integral over one
  period. The integrand is periodic and analytic, so the N-point rule is exact up to
  aliasing terms J_{N±1}(x), negligible for x < N/2; the kernels need
  x = ω_c·r ≤ π·10√2 ≈ 44.5 (N = 128);
* per-sample random kernels drawn from explicit `jax.random` keys
  (`random_blur_kernel`, `random_sinc_kernel`, `sample_kernels`). The kernel size is a
  traced value, so every kernel is built on the static 21×21 grid and masked to the
  sampled odd size: this equals building the size-k kernel and zero-padding it
  (centred) to 21×21, as the dataset does, while keeping shapes static under jit.

All functions compute in the default float dtype (float32; float64 under
`jax.enable_x64(True)`), so the float64 parity test exercises the same jnp code.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# RealESRGANDataset: kernels are padded to 21x21; sizes 2v+1, v = 3..10.
PAD_SIZE = 21
KERNEL_SIZES = (7, 9, 11, 13, 15, 17, 19, 21)
# Random mixed kernel types and their probabilities (the yml kernel_list/prob);
# KERNEL_TYPES is also the index order of `mixed_kernel`'s `kernel_type`.
KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso",
                "plateau_iso", "plateau_aniso")
KERNEL_PROBS = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
# Rotation θ ~ U[−π, π) for anisotropic types.
ROTATION_RANGE = (-math.pi, math.pi)
# The sinc cutoff ω_c ~ U[π/3, π) for sizes < 13, U[π/5, π) otherwise;
# the final sinc always uses U[π/3, π).
SINC_SMALL_SIZE_LIMIT = 13
SINC_CUTOFF_RANGE_SMALL = (math.pi / 3, math.pi)
SINC_CUTOFF_RANGE_LARGE = (math.pi / 5, math.pi)
SINC_CUTOFF_RANGE_FINAL = (math.pi / 3, math.pi)
# With probability 0.5 the shape parameter β is drawn below 1, else above 1.
BETA_BELOW_ONE_PROB = 0.5
# Quarter-period midpoint nodes of the Bessel integral (see `j1`): 4·32 = 128 nodes,
# accurate to machine precision for x < 60.
J1_QUARTER_NODES = 32
_J1_SIN_NODES = np.sin((np.arange(J1_QUARTER_NODES) + 0.5) * (np.pi / (2 * J1_QUARTER_NODES)))

# Family ids used to pick the kernel formula per type (KERNEL_TYPES order).
_GAUSSIAN, _GENERALIZED, _PLATEAU = 0, 1, 2
_TYPE_FAMILY = (_GAUSSIAN, _GAUSSIAN, _GENERALIZED, _GENERALIZED, _PLATEAU, _PLATEAU)
_TYPE_ISOTROPIC = (True, False, True, False, True, False)


def _float_dtype():
    """The default float dtype: float32, or float64 when x64 is enabled."""
    return jnp.result_type(float)


def _check_size(kernel_size: int) -> int:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    return kernel_size


# --------------------------------------------------------------------------------------
# Fixed-size building blocks (BasicSR semantics).
# --------------------------------------------------------------------------------------

def mesh_grid(kernel_size: int) -> jax.Array:
    """(k, k, 2) grid of offsets from the centre: [..., 0] = x (column offset),
    [..., 1] = y (row offset), values −(k−1)/2 … (k−1)/2."""
    k = _check_size(kernel_size)
    ax = jnp.arange(k, dtype=_float_dtype()) - (k - 1) / 2
    yy, xx = jnp.meshgrid(ax, ax, indexing="ij")
    return jnp.stack([xx, yy], axis=-1)


def sigma_matrix(sig_x, sig_y, theta) -> jax.Array:
    """Covariance R(θ) diag(σx², σy²) R(θ)ᵀ with R = [[cos, −sin], [sin, cos]]; (..., 2, 2)."""
    dt = _float_dtype()
    sig_x, sig_y, theta = (jnp.asarray(v, dt) for v in (sig_x, sig_y, theta))
    c, s = jnp.cos(theta), jnp.sin(theta)
    a, d = sig_x ** 2, sig_y ** 2
    # R (D Rᵀ) written out, with D Rᵀ = [[a c, a s], [−d s, d c]].
    m00 = c * (a * c) + (-s) * (-d * s)
    m01 = c * (a * s) + (-s) * (d * c)
    m10 = s * (a * c) + c * (-d * s)
    m11 = s * (a * s) + c * (d * c)
    return jnp.stack([jnp.stack([m00, m01], -1), jnp.stack([m10, m11], -1)], -2)


def _iso_sigma_matrix(sig_x) -> jax.Array:
    sig_x = jnp.asarray(sig_x, _float_dtype())
    zero = jnp.zeros_like(sig_x)
    a = sig_x ** 2
    return jnp.stack([jnp.stack([a, zero], -1), jnp.stack([zero, a], -1)], -2)


def _inverse_2x2(m: jax.Array) -> jax.Array:
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    return jnp.stack([jnp.stack([d / det, -b / det], -1),
                      jnp.stack([-c / det, a / det], -1)], -2)


def _quadratic_form(grid: jax.Array, cov: jax.Array) -> jax.Array:
    """Q(p) = pᵀ Σ⁻¹ p on the grid (k, k, 2); cov (2, 2) -> (k, k)."""
    inv = _inverse_2x2(cov)
    x, y = grid[..., 0], grid[..., 1]
    # (grid · Σ⁻¹) · grid, summed over the last axis (BasicSR's evaluation order).
    return (x * inv[0, 0] + y * inv[1, 0]) * x + (x * inv[0, 1] + y * inv[1, 1]) * y


def _covariance(sig_x, sig_y, theta, isotropic: bool) -> jax.Array:
    return _iso_sigma_matrix(sig_x) if isotropic else sigma_matrix(sig_x, sig_y, theta)


def _two_sum(a, b):
    """Error-free addition: a + b = s + e exactly (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def accurate_sum(kernel: jax.Array) -> jax.Array:
    """Sum over the last two axes by compensated pairwise summation.

    A plain float32 sum of a 21×21 sinc kernel (terms of both signs) is off by up to
    ~8e-7, which would alone exceed the 1e-7 kernel tolerance after normalisation;
    this sum is accurate to about one rounding of the result.
    """
    values = kernel.reshape(kernel.shape[:-2] + (-1,))
    n = values.shape[-1]
    width = 1 << max(0, (n - 1).bit_length())
    values = jnp.pad(values, [(0, 0)] * (values.ndim - 1) + [(0, width - n)])
    low = jnp.zeros_like(values)
    while values.shape[-1] > 1:
        values, err = _two_sum(values[..., 0::2], values[..., 1::2])
        low = low[..., 0::2] + low[..., 1::2] + err
    return (values + low)[..., 0]


def _normalise(kernel: jax.Array) -> jax.Array:
    return kernel / accurate_sum(kernel)


def bivariate_gaussian(kernel_size: int, sig_x, sig_y, theta, isotropic: bool = True):
    """K ∝ exp(−Q/2), normalised to sum 1 (BasicSR). Iso: Σ = σx² I (σy, θ ignored)."""
    grid = mesh_grid(kernel_size)
    q = _quadratic_form(grid, _covariance(sig_x, sig_y, theta, isotropic))
    return _normalise(jnp.exp(-0.5 * q))


def bivariate_generalized_gaussian(kernel_size: int, sig_x, sig_y, theta, beta,
                                   isotropic: bool = True):
    """K ∝ exp(−½ Q^β), normalised to sum 1 (BasicSR)."""
    grid = mesh_grid(kernel_size)
    q = _quadratic_form(grid, _covariance(sig_x, sig_y, theta, isotropic))
    return _normalise(jnp.exp(-0.5 * jnp.power(q, jnp.asarray(beta, q.dtype))))


def bivariate_plateau(kernel_size: int, sig_x, sig_y, theta, beta, isotropic: bool = True):
    """K ∝ 1 / (1 + Q^β), normalised to sum 1 (BasicSR)."""
    grid = mesh_grid(kernel_size)
    q = _quadratic_form(grid, _covariance(sig_x, sig_y, theta, isotropic))
    return _normalise(1.0 / (jnp.power(q, jnp.asarray(beta, q.dtype)) + 1.0))


def j1(x) -> jax.Array:
    """Bessel function of the first kind, order 1, for |x| ≲ 60 (see module docstring).

    Uses J1(x) = 1/(2π) ∫_0^{2π} sin τ · sin(x sin τ) dτ (the cos τ·cos(x sin τ) part of
    Bessel's integrand integrates to zero). The midpoint rule with 4·J1_QUARTER_NODES
    nodes is exact up to aliasing terms J_{4M±1}(x); by the symmetries of the integrand
    only the nodes in (0, π/2) are needed. The sines of the nodes are correctly rounded
    constants. Absolute error ≈ 1e-15 (float64) and ≈ 1e-7·(1 + x/10) (float32, the
    rounding of x·sin τ) on [0, 60].
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(_float_dtype())
    nodes = jnp.asarray(_J1_SIN_NODES, x.dtype)
    return jnp.mean(nodes * jnp.sin(x[..., None] * nodes), axis=-1)


def _sinc_values(cutoff, r: jax.Array) -> jax.Array:
    """ω_c J1(ω_c r) / (2π r) with the centre (r = 0) set to ω_c² / (4π)."""
    cutoff = jnp.asarray(cutoff, r.dtype)
    safe_r = jnp.where(r == 0, 1.0, r)
    values = cutoff * j1(cutoff * safe_r) / (2 * math.pi * safe_r)
    return jnp.where(r == 0, cutoff ** 2 / (4 * math.pi), values)


def circular_lowpass_kernel(cutoff, kernel_size: int, pad_to: int = 0) -> jax.Array:
    """2-D sinc (circular low-pass) kernel normalised to sum 1 (BasicSR), zero-padded
    (centred) to `pad_to` when that is larger than `kernel_size`."""
    grid = mesh_grid(kernel_size)
    r = jnp.sqrt(grid[..., 0] ** 2 + grid[..., 1] ** 2)
    kernel = _normalise(_sinc_values(cutoff, r))
    if pad_to > kernel_size:
        if (pad_to - kernel_size) % 2:
            raise ValueError(f"pad_to - kernel_size must be even, got {pad_to} - {kernel_size}")
        p = (pad_to - kernel_size) // 2
        kernel = jnp.pad(kernel, ((p, p), (p, p)))
    return kernel


# --------------------------------------------------------------------------------------
# Traced-size kernels on the static 21x21 grid.
# --------------------------------------------------------------------------------------

def _support_mask(kernel_size) -> jax.Array:
    """(21, 21) bool mask of the centred kernel_size×kernel_size square (traced size)."""
    half = (jnp.asarray(kernel_size) - 1) // 2
    ax = jnp.abs(jnp.arange(PAD_SIZE) - PAD_SIZE // 2)
    inside = ax <= half
    return inside[:, None] & inside[None, :]


def _masked_normalise(kernel: jax.Array, mask: jax.Array) -> jax.Array:
    return _normalise(jnp.where(mask, kernel, 0.0))


def mixed_kernel(kernel_type, kernel_size, sig_x, sig_y, theta, beta) -> jax.Array:
    """21×21 kernel of type index `kernel_type` (into KERNEL_TYPES) at a traced odd size.

    Equals the BasicSR `random_*` kernel with these parameters (normalised twice, as the
    random wrappers re-normalise the base kernel), zero-padded to 21. For isotropic types
    σy and θ are ignored. All arguments may be traced scalars.
    """
    dt = _float_dtype()
    kernel_type = jnp.asarray(kernel_type)
    family = jnp.asarray(_TYPE_FAMILY)[kernel_type]
    isotropic = jnp.asarray(_TYPE_ISOTROPIC)[kernel_type]
    grid = mesh_grid(PAD_SIZE)
    cov = jnp.where(isotropic, _iso_sigma_matrix(sig_x), sigma_matrix(sig_x, sig_y, theta))
    q = _quadratic_form(grid, cov)
    q_beta = jnp.power(q, jnp.asarray(beta, dt))
    kernel = jnp.select(
        [family == _GAUSSIAN, family == _GENERALIZED],
        [jnp.exp(-0.5 * q), jnp.exp(-0.5 * q_beta)],
        1.0 / (q_beta + 1.0))
    mask = _support_mask(kernel_size)
    return _masked_normalise(_masked_normalise(kernel, mask), mask)


def sinc_kernel(cutoff, kernel_size) -> jax.Array:
    """21×21 circular low-pass kernel of a traced odd size, zero-padded (centred) to 21."""
    grid = mesh_grid(PAD_SIZE)
    r = jnp.sqrt(grid[..., 0] ** 2 + grid[..., 1] ** 2)
    return _masked_normalise(_sinc_values(cutoff, r), _support_mask(kernel_size))


def pulse_kernel() -> jax.Array:
    """21×21 identity kernel (1 at the centre)."""
    return jnp.zeros((PAD_SIZE, PAD_SIZE), _float_dtype()).at[PAD_SIZE // 2, PAD_SIZE // 2].set(1.0)


# --------------------------------------------------------------------------------------
# Random sampling (explicit keys, one kernel per call; vmap over keys for a batch).
# --------------------------------------------------------------------------------------

def _uniform(key, lo, hi):
    return jax.random.uniform(key, (), _float_dtype(), lo, hi)


def random_kernel_size(key, kernel_range: Sequence[int] = KERNEL_SIZES) -> jax.Array:
    """Odd size drawn uniformly from `kernel_range` (BasicSR `random.choice(kernel_range)`;
    int32 scalar)."""
    return jax.random.choice(key, jnp.asarray(kernel_range, jnp.int32))


def kernel_type_indices(kernel_list: Sequence[str]) -> tuple[int, ...]:
    """Indices into KERNEL_TYPES of the yml `kernel_list` names; ValueError naming the
    unknown name otherwise."""
    unknown = [name for name in kernel_list if name not in KERNEL_TYPES]
    if unknown or not kernel_list:
        raise ValueError(f"kernel_list {list(kernel_list)}: unknown kernel type(s) "
                         f"{unknown}; expected a non-empty list of {KERNEL_TYPES}")
    return tuple(KERNEL_TYPES.index(name) for name in kernel_list)


def check_kernel_choice(kernel_list: Sequence[str], kernel_prob: Sequence[float],
                        names: tuple[str, str] = ("kernel_list", "kernel_prob")) -> None:
    """A `kernel_list` / `kernel_prob` pair BasicSR's `random.choices` accepts:
    known types, one non-negative weight per entry, a positive total."""
    try:
        kernel_type_indices(kernel_list)
    except ValueError as exc:
        raise ValueError(f"{names[0]}: {exc}") from None
    if len(kernel_prob) != len(kernel_list):
        raise ValueError(f"{names[1]} has {len(kernel_prob)} entries but {names[0]} has "
                         f"{len(kernel_list)}: one probability per kernel type")
    if min(kernel_prob) < 0 or sum(kernel_prob) <= 0:
        raise ValueError(f"{names[1]}={list(kernel_prob)}: weights must be >= 0 with a "
                         "positive sum")


def check_kernel_range(kernel_range: Sequence[int], name: str = "kernel_range") -> None:
    """Kernel sizes must be odd, between 3 and PAD_SIZE (kernels are padded to 21x21)."""
    bad = [k for k in kernel_range
           if not isinstance(k, int) or k % 2 == 0 or not 3 <= k <= PAD_SIZE]
    if bad or not kernel_range:
        raise ValueError(f"{name}={list(kernel_range)}: sizes must be odd ints in "
                         f"[3, {PAD_SIZE}] (bad: {bad})")


def _random_beta(key, beta_range):
    """β: with prob 0.5 U[lo, 1), else U[1, hi) (BasicSR random generalized/plateau)."""
    k_coin, k_low, k_high = jax.random.split(key, 3)
    low = _uniform(k_low, beta_range[0], 1.0)
    high = _uniform(k_high, 1.0, beta_range[1])
    return jnp.where(jax.random.uniform(k_coin) < BETA_BELOW_ONE_PROB, low, high)


def random_mixed_params(key, sigma_range: Sequence[float], betag_range: Sequence[float],
                        betap_range: Sequence[float],
                        kernel_probs: Sequence[float] = KERNEL_PROBS,
                        kernel_list: Sequence[str] = KERNEL_TYPES) -> dict[str, jax.Array]:
    """Parameters of one BasicSR `random_mixed_kernels` draw (noise_range=None).

    Type: an entry of `kernel_list` drawn with the weights `kernel_probs` (BasicSR
    `random.choices(kernel_list, kernel_prob)`), returned as its index into
    KERNEL_TYPES; σx ~ U[sigma_range); anisotropic types also
    σy ~ U[sigma_range) and θ ~ U[−π, π) (isotropic: σy = σx, θ = 0); β per family
    (generalized: betag_range, plateau: betap_range; Gaussian: 1, unused) with prob 0.5
    from U[lo, 1), else from U[1, hi).
    """
    k_type, k_sx, k_sy, k_theta, k_bg, k_bp = jax.random.split(key, 6)
    check_kernel_choice(kernel_list, kernel_probs)
    probs = jnp.asarray(kernel_probs, _float_dtype())
    entry = jax.random.choice(k_type, len(kernel_list), p=probs / jnp.sum(probs))
    kernel_type = jnp.asarray(kernel_type_indices(kernel_list), jnp.int32)[entry]
    isotropic = jnp.asarray(_TYPE_ISOTROPIC)[kernel_type]
    family = jnp.asarray(_TYPE_FAMILY)[kernel_type]
    sig_x = _uniform(k_sx, *sigma_range)
    sig_y = jnp.where(isotropic, sig_x, _uniform(k_sy, *sigma_range))
    theta = jnp.where(isotropic, 0.0, _uniform(k_theta, *ROTATION_RANGE))
    beta = jnp.select([family == _GENERALIZED, family == _PLATEAU],
                      [_random_beta(k_bg, betag_range), _random_beta(k_bp, betap_range)],
                      1.0)
    return {"kernel_type": kernel_type, "sig_x": sig_x, "sig_y": sig_y, "theta": theta,
            "beta": beta}


def random_mixed_kernel(key, kernel_size, sigma_range: Sequence[float],
                        betag_range: Sequence[float], betap_range: Sequence[float],
                        kernel_probs: Sequence[float] = KERNEL_PROBS,
                        kernel_list: Sequence[str] = KERNEL_TYPES) -> jax.Array:
    """One random mixed kernel (see `random_mixed_params`) of a traced size, padded to 21."""
    params = random_mixed_params(key, sigma_range, betag_range, betap_range, kernel_probs,
                                 kernel_list)
    return mixed_kernel(kernel_size=kernel_size, **params)


def random_blur_kernel(key, sigma_range: Sequence[float], betag_range: Sequence[float],
                       betap_range: Sequence[float], sinc_prob: float,
                       kernel_probs: Sequence[float] = KERNEL_PROBS,
                       kernel_list: Sequence[str] = KERNEL_TYPES,
                       kernel_range: Sequence[int] = KERNEL_SIZES) -> jax.Array:
    """`kernel1` / `kernel2` of RealESRGANDataset: size from `kernel_range`; with prob `sinc_prob` a
    sinc kernel (ω_c ~ U[π/3, π) if size < 13 else U[π/5, π)), else a random mixed
    kernel of a type from `kernel_list` / `kernel_probs`. (21, 21)."""
    k_size, k_coin, k_cut, k_mixed = jax.random.split(key, 4)
    size = random_kernel_size(k_size, kernel_range)
    small = size < SINC_SMALL_SIZE_LIMIT
    lo = jnp.where(small, SINC_CUTOFF_RANGE_SMALL[0], SINC_CUTOFF_RANGE_LARGE[0])
    hi = jnp.where(small, SINC_CUTOFF_RANGE_SMALL[1], SINC_CUTOFF_RANGE_LARGE[1])
    cutoff = lo + jax.random.uniform(k_cut, (), _float_dtype()) * (hi - lo)
    sinc = sinc_kernel(cutoff, size)
    mixed = random_mixed_kernel(k_mixed, size, sigma_range, betag_range, betap_range,
                                kernel_probs, kernel_list)
    return jnp.where(jax.random.uniform(k_coin) < sinc_prob, sinc, mixed)


def random_sinc_kernel(key, final_sinc_prob: float,
                       kernel_range: Sequence[int] = KERNEL_SIZES) -> jax.Array:
    """The final `sinc_kernel` of RealESRGANDataset: with prob `final_sinc_prob` a sinc kernel of a
    size from `kernel_range` with ω_c ~ U[π/3, π), else the 21×21 identity."""
    k_coin, k_size, k_cut = jax.random.split(key, 3)
    cutoff = _uniform(k_cut, *SINC_CUTOFF_RANGE_FINAL)
    sinc = sinc_kernel(cutoff, random_kernel_size(k_size, kernel_range))
    return jnp.where(jax.random.uniform(k_coin) < final_sinc_prob, sinc, pulse_kernel())


def sample_kernels(key, batch_size: int, cfg) -> dict[str, jax.Array]:
    """Per-sample `kernel1`, `kernel2`, `sinc_kernel`, each (B, 21, 21).

    `cfg` provides blur_sigma, betag_range, betap_range, sinc_prob, kernel_list,
    kernel_prob (first degradation), the same with suffix 2 (second degradation),
    final_sinc_prob and kernel_range (the sizes of all three kernels, as the BasicSR
    dataset uses its one `kernel_range` for all of them); see
    `realesrgan.default_config`.
    """
    keys = jax.random.split(key, (3, batch_size))
    sizes = tuple(cfg.kernel_range)
    kernel1 = jax.vmap(lambda k: random_blur_kernel(
        k, cfg.blur_sigma, cfg.betag_range, cfg.betap_range, cfg.sinc_prob,
        cfg.kernel_prob, cfg.kernel_list, sizes))(keys[0])
    kernel2 = jax.vmap(lambda k: random_blur_kernel(
        k, cfg.blur_sigma2, cfg.betag_range2, cfg.betap_range2, cfg.sinc_prob2,
        cfg.kernel_prob2, cfg.kernel_list2, sizes))(keys[1])
    sinc = jax.vmap(lambda k: random_sinc_kernel(k, cfg.final_sinc_prob, sizes))(keys[2])
    return {"kernel1": kernel1, "kernel2": kernel2, "sinc_kernel": sinc}
