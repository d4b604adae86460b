"""Gaussian blur kernels of the classic KDSR degradation (DEGRADATION.md §1.1-§1.3).

Isotropic and anisotropic Gaussian kernels on the official 21x21 grid, computed in
float32 the way the official `utils/util2.py` does (so they match its kernels to float32
rounding):

* grid: offsets `a = arange(k) - k // 2`; entry `K[r, c]` has `x = a[c]` (column,
  horizontal) and `y = a[r]` (row, vertical, pointing down) (§1.1);
* isotropic: `exp(-(x² + y²) / (2 σ²))` normalised to sum 1 (§1.2);
* anisotropic: `Σ = R(θ) diag(λ1², λ2²) R(θ)ᵀ`, `R = [[cos, -sin], [sin, cos]]`,
  `exp(-½ pᵀ Σ⁻¹ p)` with `p = (x, y)`, normalised to sum 1 (§1.3). The lambdas are
  standard deviations; θ is in radians here (`degrees_to_radians` gives the official
  float32 conversion used for the fixed test kernels).

Every function takes parameter arrays of any batch shape `S` and returns kernels of
shape `S + (k, k)`; a scalar parameter gives one `(k, k)` kernel. All are jittable.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# DEGRADATION.md §1: the classic pipeline always uses 21x21 kernels.
KERNEL_SIZE = 21


def grid(kernel_size: int = KERNEL_SIZE) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Offset grids `(xx, yy)`, each (k, k) float32: xx = column offset, yy = row offset."""
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be positive, got {kernel_size}")
    ax = jnp.arange(kernel_size, dtype=jnp.float32) - kernel_size // 2
    xx = jnp.broadcast_to(ax[None, :], (kernel_size, kernel_size))
    yy = jnp.broadcast_to(ax[:, None], (kernel_size, kernel_size))
    return xx, yy


def _normalise(kernel: jnp.ndarray) -> jnp.ndarray:
    return kernel / jnp.sum(kernel, axis=(-2, -1), keepdims=True)


def isotropic_gaussian(sigma, kernel_size: int = KERNEL_SIZE) -> jnp.ndarray:
    """Isotropic Gaussian kernel(s) (§1.2): `sigma` of shape S -> S + (k, k) float32."""
    sigma = jnp.asarray(sigma, jnp.float32)[..., None, None]
    xx, yy = grid(kernel_size)
    kernel = jnp.exp(-(xx * xx + yy * yy) / (2.0 * (sigma * sigma)))
    return _normalise(kernel)


def covariance(lambda1, lambda2, theta) -> jnp.ndarray:
    """`R(θ) diag(λ1², λ2²) R(θ)ᵀ` (§1.3), θ in radians: shape S -> S + (2, 2) float32."""
    l1 = jnp.asarray(lambda1, jnp.float32)
    l2 = jnp.asarray(lambda2, jnp.float32)
    theta = jnp.asarray(theta, jnp.float32)
    l1, l2, theta = jnp.broadcast_arrays(l1, l2, theta)
    v1, v2 = l1 * l1, l2 * l2
    c, s = jnp.cos(theta), jnp.sin(theta)
    # Σ = U (D Uᵀ), D Uᵀ = [[v1 c, v1 s], [-v2 s, v2 c]] (same product order as a bmm).
    s00 = c * (v1 * c) + s * (v2 * s)
    s01 = c * (v1 * s) - s * (v2 * c)
    s10 = s * (v1 * c) - c * (v2 * s)
    s11 = s * (v1 * s) + c * (v2 * c)
    return jnp.stack([jnp.stack([s00, s01], -1), jnp.stack([s10, s11], -1)], -2)


def anisotropic_gaussian(lambda1, lambda2, theta,
                         kernel_size: int = KERNEL_SIZE) -> jnp.ndarray:
    """Anisotropic Gaussian kernel(s) (§1.3), θ in radians: S -> S + (k, k) float32."""
    cov = covariance(lambda1, lambda2, theta)
    a, b = cov[..., 0, 0], cov[..., 0, 1]
    c, d = cov[..., 1, 0], cov[..., 1, 1]
    det = a * d - b * c
    # Σ⁻¹ of a 2x2 matrix; [..., None, None] broadcasts each entry over the grid.
    i00, i01 = (d / det)[..., None, None], (-b / det)[..., None, None]
    i10, i11 = (-c / det)[..., None, None], (a / det)[..., None, None]
    xx, yy = grid(kernel_size)
    # pᵀ Σ⁻¹ p as (p Σ⁻¹) · p, with p = (x, y) a row vector.
    quad = (xx * i00 + yy * i10) * xx + (xx * i01 + yy * i11) * yy
    return _normalise(jnp.exp(-0.5 * quad))


def degrees_to_radians(theta_degrees) -> jnp.ndarray:
    """Official fixed-kernel conversion `θ / 180 · π`, in float32 (§1.3 "test").

    Concrete inputs are converted with NumPy: under `jit`, XLA turns `/ 180` into a
    multiplication by the rounded reciprocal, which can be 1 ulp off the official value.
    """
    try:
        theta = np.asarray(theta_degrees, np.float32)
    except jax.errors.TracerArrayConversionError:
        return jnp.asarray(theta_degrees, jnp.float32) / 180.0 * jnp.float32(math.pi)
    return jnp.asarray(theta / np.float32(180.0) * np.float32(math.pi))
