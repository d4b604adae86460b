"""Classic KDSR degradation (isotropic / anisotropic Gaussian blur, bicubic, noise).

Reimplements the official `KDSR-classic/utils/util2.py` `SRMDPreprocessing`
(DEGRADATION.md §1) on device, in JAX:

    kernel -> reflect-padded blur (§1.4) -> MATLAB-like bicubic ÷s (§1.5)
           -> Gaussian noise (§1.6) -> 8-bit quantisation (§1.6)

* `default_config()` / `test_config(**params)`: the pipeline settings (ml_collections).
* `degrade(key, hr, cfg) -> lr`: the whole pipeline, jittable; `cfg` is read at trace
  time (close over it, or pass a FrozenConfigDict as a static argument). With
  `cfg.random` the kernel parameters and the noise level are drawn from `key`: one draw
  per batch as in the official util2 (`per_sample=False`), or one per image
  (`per_sample=True`, the unused util.py variant, §1.8).
* Deterministic lower-level pieces: `kernel_params`, `kernels_from_params`,
  `make_kernels`, `noise_levels`, `sample_noise`, `apply(hr, kernels, scale, noise)`
  (all intermediates), `quantize(x)` and `upsample_lr` (util2's unused second output,
  §1.7: bicubic ×s of the unquantised noisy LR).

Images are NHWC float32 in [0, 1]; the returned LR holds exact 8-bit levels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdsr_jax.degradation import bicubic, filters, kernels as kernels_lib

# --- Official defaults (DEGRADATION.md §1, `SRMDPreprocessing` arguments) ---------------
SCALE = 4                         # §1 `scale=4`
KERNEL_SIZE = kernels_lib.KERNEL_SIZE   # §1 `kernel_size=21`
SIG = 2.6                         # §1.2 default test sigma (`sig=2.6`)
SIG_MIN, SIG_MAX = 0.2, 4.0       # §1.2 training sigma ~ U[0.2, 4.0)
LAMBDA_1, LAMBDA_2 = 0.2, 4.0     # §1.3 default test lambdas (`lambda_1`, `lambda_2`)
THETA = 0.0                       # §1.3 default test theta, degrees
LAMBDA_MIN, LAMBDA_MAX = 0.2, 4.0  # §1.3 training lambdas ~ U[0.2, 4.0)
THETA_RANGE = math.pi             # §1.3 training theta ~ U[0, π) radians
NOISE = 0.0                       # §1.6 noise level in 0-255 units (0 iso, 25 aniso training)
PIXEL_MAX = 255.0                 # §1.6 8-bit quantisation levels (rgb_range = 1)

# Accepted blur names -> canonical ('iso' | 'aniso'); the official spellings are aliases.
BLUR_TYPES = {"iso": "iso", "iso_gaussian": "iso", "aniso": "aniso",
              "aniso_gaussian": "aniso"}
# Official argument names accepted as aliases of the config fields (§1 constructor).
ALIASES = {"blur_type": "blur", "sig": "sigma", "lambda_1": "lambda1",
           "lambda_2": "lambda2"}


def default_config() -> ml_collections.ConfigDict:
    """Training defaults of the classic pipeline (random kernels, one draw per batch)."""
    return ml_collections.ConfigDict(dict(
        scale=SCALE,
        blur="iso",            # 'iso' | 'aniso'
        sigma=SIG,             # iso test sigma; 0 skips the blur (§1.2)
        lambda1=LAMBDA_1,      # aniso test std devs along the principal axes (§1.3)
        lambda2=LAMBDA_2,
        theta=THETA,           # aniso test angle, DEGREES (§1.3)
        noise=NOISE,           # 0-255 units; random: σ_n = U[0,1)·noise/255 (§1.6)
        random=True,           # True: sample as in training; False: fixed parameters
        per_sample=False,      # False: one kernel & noise level per batch (util2)
        sig_min=SIG_MIN, sig_max=SIG_MAX,
        lambda_min=LAMBDA_MIN, lambda_max=LAMBDA_MAX,
        kernel_size=KERNEL_SIZE,
    ))


def test_config(**params) -> ml_collections.ConfigDict:
    """Deterministic (`random=False`) config; accepts official names (`blur_type`, `sig`,
    `lambda_1`, `lambda_2`) as well as the config field names."""
    cfg = default_config()
    cfg.random = False
    for name, value in params.items():
        field = ALIASES.get(name, name)
        if field not in cfg:
            raise ValueError(f"classic.test_config: unknown parameter {name!r}")
        cfg[field] = value
    return cfg


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated, canonical pipeline settings (plain Python values, read at trace time)."""
    scale: int
    blur: str
    sigma: float
    lambda1: float
    lambda2: float
    theta: float
    noise: float
    random: bool
    per_sample: bool
    sig_min: float
    sig_max: float
    lambda_min: float
    lambda_max: float
    kernel_size: int

    @property
    def skips_blur(self) -> bool:
        """Official quirk (§1.2): iso with sigma == 0 skips the blur, even when random."""
        return self.blur == "iso" and self.sigma == 0


def resolve(cfg: Any) -> Settings:
    """Reads a ConfigDict / FrozenConfigDict / dict / Settings into validated `Settings`.

    Official field names (`blur_type`, `sig`, `lambda_1`, `lambda_2`) are honoured and,
    when present, take precedence over the canonical ones.
    """
    if isinstance(cfg, Settings):
        return cfg
    base = default_config().to_dict()
    raw = dict(cfg.items()) if hasattr(cfg, "items") else None
    if raw is None:
        raise ValueError(f"classic: expected a config mapping, got {type(cfg).__name__}")
    unknown = sorted(n for n in raw if n not in base and n not in ALIASES)
    if unknown:
        raise ValueError(f"classic: unknown config field(s) {unknown}; expected "
                         f"{sorted(base)} (or the official names {sorted(ALIASES)})")
    for name, value in raw.items():
        if name in base:
            base[name] = value
    for alias, field in ALIASES.items():
        if alias in raw:
            base[field] = raw[alias]
    blur = BLUR_TYPES.get(str(base["blur"]))
    if blur is None:
        raise ValueError(f"classic: unknown blur type {base['blur']!r}; expected one of "
                         f"{sorted(BLUR_TYPES)}")
    scale = base["scale"]
    if isinstance(scale, float) and scale.is_integer():
        scale = int(scale)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"classic: scale must be a positive integer, got {scale!r}")
    k = base["kernel_size"]
    if not isinstance(k, int) or k < 1 or k % 2 != 1:
        raise ValueError(f"classic: kernel_size must be a positive odd integer, got {k!r}")
    noise = float(base["noise"])
    if noise < 0:
        raise ValueError(f"classic: noise must be >= 0 (0-255 units), got {noise}")
    return Settings(scale=scale, blur=blur, sigma=float(base["sigma"]),
                    lambda1=float(base["lambda1"]), lambda2=float(base["lambda2"]),
                    theta=float(base["theta"]), noise=noise, random=bool(base["random"]),
                    per_sample=bool(base["per_sample"]), sig_min=float(base["sig_min"]),
                    sig_max=float(base["sig_max"]), lambda_min=float(base["lambda_min"]),
                    lambda_max=float(base["lambda_max"]), kernel_size=k)


# --- Kernels (§1.2, §1.3) ---------------------------------------------------------------

def _num_draws(s: Settings, batch: int) -> int:
    return batch if (s.random and s.per_sample) else 1


def _uniform(key, n: int, lo: float, hi: float) -> jax.Array:
    """U[lo, hi) as the official `rand(n) * (hi - lo) + lo`, float32."""
    return jax.random.uniform(key, (n,), jnp.float32) * (hi - lo) + lo


def kernel_params(key: jax.Array, cfg: Any, batch: int) -> dict[str, jax.Array]:
    """Kernel parameters, each of shape (n,), n = batch if random & per_sample else 1.

    iso: {'sigma'}; aniso: {'lambda1', 'lambda2', 'theta'} with theta in RADIANS (random:
    U[0, π); fixed: the config's degrees converted as the official code does).
    """
    s = resolve(cfg)
    n = _num_draws(s, batch)
    if s.blur == "iso":
        if s.random:
            return {"sigma": _uniform(key, n, s.sig_min, s.sig_max)}
        return {"sigma": jnp.full((1,), s.sigma, jnp.float32)}
    if s.random:
        k_theta, k_l1, k_l2 = jax.random.split(key, 3)
        return {"theta": _uniform(k_theta, n, 0.0, THETA_RANGE),
                "lambda1": _uniform(k_l1, n, s.lambda_min, s.lambda_max),
                "lambda2": _uniform(k_l2, n, s.lambda_min, s.lambda_max)}
    return {"theta": kernels_lib.degrees_to_radians(np.full((1,), s.theta)),
            "lambda1": jnp.full((1,), s.lambda1, jnp.float32),
            "lambda2": jnp.full((1,), s.lambda2, jnp.float32)}


def kernels_from_params(params: dict[str, jax.Array],
                        kernel_size: int = KERNEL_SIZE) -> jax.Array:
    """(n, k, k) kernels from `kernel_params` output (theta in radians)."""
    if "sigma" in params:
        return kernels_lib.isotropic_gaussian(params["sigma"], kernel_size)
    return kernels_lib.anisotropic_gaussian(params["lambda1"], params["lambda2"],
                                            params["theta"], kernel_size)


def make_kernels(key: jax.Array, cfg: Any, batch: int) -> jax.Array | None:
    """(1, k, k) or (batch, k, k) blur kernels, or None when the blur is skipped."""
    s = resolve(cfg)
    if s.skips_blur:
        return None
    return kernels_from_params(kernel_params(key, s, batch), s.kernel_size)


# --- Noise (§1.6) -----------------------------------------------------------------------

def noise_levels(key: jax.Array, cfg: Any, batch: int) -> jax.Array:
    """Noise standard deviations in [0, 1] units, shape (n, 1, 1, 1) (n = 1 or batch)."""
    s = resolve(cfg)
    level = s.noise / PIXEL_MAX
    if s.random:
        n = _num_draws(s, batch)
        return jax.random.uniform(key, (n, 1, 1, 1), jnp.float32) * level
    return jnp.full((1, 1, 1, 1), level, jnp.float32)


def sample_noise(key: jax.Array, cfg: Any, lr_shape: tuple[int, ...]) -> jax.Array | None:
    """Additive noise σ_n · N(0, 1), i.i.d. per pixel and channel; None when noise == 0."""
    s = resolve(cfg)
    if s.noise == 0:
        return None
    k_level, k_normal = jax.random.split(key)
    sigma_n = noise_levels(k_level, s, lr_shape[0])
    return jax.random.normal(k_normal, lr_shape, jnp.float32) * sigma_n


# --- The pipeline -----------------------------------------------------------------------

# The 256 quantisation levels k / 255, correctly rounded to float32. XLA rewrites a
# division by a constant into a multiplication by its reciprocal, which is 1 ulp off
# torch's `div(255)` for about half of the levels; a table lookup is exact everywhere.
_LEVELS = np.arange(PIXEL_MAX + 1, dtype=np.float32) / np.float32(PIXEL_MAX)


def quantize(x: jax.Array) -> jax.Array:
    """8-bit quantisation `round(clamp(255 x, 0, 255)) / 255`, round half to even (§1.6)."""
    k = jnp.round(jnp.clip(x * PIXEL_MAX, 0.0, PIXEL_MAX))
    return jnp.asarray(_LEVELS)[k.astype(jnp.int32)]


class ClassicOutputs(NamedTuple):
    """All intermediates of one pass (names follow the parity fixtures)."""
    blurred_hr: jax.Array      # (B, H, W, C) blur output (= hr when the blur is skipped)
    lr_clean: jax.Array        # (B, H/s, W/s, C) bicubic output, before noise
    lr_noisy: jax.Array        # lr_clean + noise, unquantised
    lr: jax.Array              # quantize(lr_noisy): what the networks see


def check_hr(hr, scale: int, kernel_size: int | None) -> None:
    """Trace-time validation of an HR batch; raises ValueError naming the shape."""
    shape = tuple(hr.shape)
    if hr.ndim != 4:
        raise ValueError(f"classic: expected an HR batch (B, H, W, C), got shape {shape}")
    if not jnp.issubdtype(hr.dtype, jnp.floating):
        raise ValueError(f"classic: expected a float HR batch in [0, 1], got dtype "
                         f"{hr.dtype} for shape {shape}")
    _, h, w, _ = shape
    if kernel_size is not None and min(h, w) <= kernel_size // 2:
        raise ValueError(f"classic: HR {h}x{w} (shape {shape}) is too small for the "
                         f"{kernel_size}x{kernel_size} blur: H and W must be > "
                         f"{kernel_size // 2}")
    if h % scale or w % scale or h < scale or w < scale:
        raise ValueError(f"classic: HR {h}x{w} (shape {shape}) is not divisible by the "
                         f"scale {scale}")


def apply(hr: jax.Array, kernels: jax.Array | None, scale: int,
          noise: jax.Array | None = None) -> ClassicOutputs:
    """Deterministic pipeline with an explicit kernel and noise tensor.

    hr: (B, H, W, C); kernels: (k, k), (1, k, k) or (B, k, k), or None to skip the blur;
    noise: None or an array broadcastable to the LR (B, H/s, W/s, C), already scaled.
    """
    check_hr(hr, scale, None if kernels is None else jnp.shape(kernels)[-1])
    hr = hr.astype(jnp.float32)
    blurred = hr if kernels is None else filters.filter2d(hr, kernels)
    lr_clean = bicubic.downscale(blurred, scale)
    lr_noisy = lr_clean if noise is None else lr_clean + noise
    return ClassicOutputs(blurred, lr_clean, lr_noisy, quantize(lr_noisy))


def upsample_lr(lr_noisy: jax.Array, scale: int, quantized: bool = True) -> jax.Array:
    """util2's second output (§1.7): bicubic ×s of the UNquantised noisy LR, quantised."""
    up = bicubic.upscale(lr_noisy, scale)
    return quantize(up) if quantized else up


# --- Fast path for isotropic kernels ----------------------------------------------------
# The iso kernel is separable, exp(-(x²+y²)/2σ²)/S = g(x) g(y) with g = exp(-x²/2σ²)/Σ,
# and blur and bicubic are both linear along each axis, so blur + bicubic ÷s is exactly
# (in real arithmetic) LR = A_h X A_wᵀ with A = D · B(g) per axis (D: bicubic matrix,
# B(g): reflect-padded 1-D correlation). A is built from g and a static tensor
# P[c] = D · R_c (R_c: the 0/1 matrix of tap c with reflection), so the whole step is two
# small matmuls instead of a 441-tap 2-D conv. Results agree with `apply` to float32
# rounding (checked against the fixtures in the tests).

def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices without edge repetition (valid for offsets < n)."""
    i = np.abs(i)
    return np.where(i > n - 1, 2 * (n - 1) - i, i)


_TAP_CACHE: dict = {}


def _tap_operators(n: int, scale: int, kernel_size: int) -> np.ndarray:
    """P (k, n // scale, n) float32: bicubic matrix times the reflect shift of each tap."""
    key = (n, scale, kernel_size)
    if key not in _TAP_CACHE:
        d = bicubic.resize_matrix(n, 1 / scale).astype(np.float64)      # (out, n)
        half = kernel_size // 2
        taps = np.zeros((kernel_size, d.shape[0], n), np.float64)
        rows = np.arange(n)
        for c in range(kernel_size):
            src = _reflect(rows + c - half, n)                          # input of tap c
            np.add.at(taps[c], (slice(None), src), d[:, rows])
        _TAP_CACHE[key] = taps.astype(np.float32)
    return _TAP_CACHE[key]


def gaussian_1d(sigma, kernel_size: int = KERNEL_SIZE) -> jax.Array:
    """Normalised 1-D Gaussian factor g of the iso kernel: S -> S + (k,) float32."""
    sigma = jnp.asarray(sigma, jnp.float32)[..., None]
    ax = jnp.arange(kernel_size, dtype=jnp.float32) - kernel_size // 2
    g = jnp.exp(-(ax * ax) / (2.0 * (sigma * sigma)))
    return g / jnp.sum(g, axis=-1, keepdims=True)


def iso_blur_downscale(hr: jax.Array, sigma: jax.Array, scale: int,
                       kernel_size: int = KERNEL_SIZE) -> jax.Array:
    """Iso Gaussian reflect blur + bicubic ÷scale as two matmuls (= `apply(...).lr_clean`).

    sigma: (1,) shared by the batch or (B,) one per image. Returns (B, H/s, W/s, C).
    """
    check_hr(hr, scale, kernel_size)
    b, h, w, _ = hr.shape
    g = gaussian_1d(jnp.reshape(sigma, (-1,)), kernel_size)          # (n, k)
    hi = jax.lax.Precision.HIGHEST
    a_h = jnp.einsum("nc,coh->noh", g, _tap_operators(h, scale, kernel_size), precision=hi)
    a_w = jnp.einsum("nc,cow->now", g, _tap_operators(w, scale, kernel_size), precision=hi)
    x = hr.astype(jnp.float32)
    if g.shape[0] == 1:
        x = jnp.einsum("oh,bhwc->bowc", a_h[0], x, precision=hi)
        return jnp.einsum("pw,bowc->bopc", a_w[0], x, precision=hi)
    x = jnp.einsum("boh,bhwc->bowc", a_h, x, precision=hi)
    return jnp.einsum("bpw,bowc->bopc", a_w, x, precision=hi)


def degrade_full(key: jax.Array, hr: jax.Array, cfg: Any) -> ClassicOutputs:
    """`degrade` returning every intermediate (`ClassicOutputs`)."""
    s = resolve(cfg)
    check_hr(hr, s.scale, None if s.skips_blur else s.kernel_size)
    b, h, w, c = hr.shape
    k_kernel, k_noise = jax.random.split(key)
    kernels = make_kernels(k_kernel, s, b)
    noise = sample_noise(k_noise, s, (b, h // s.scale, w // s.scale, c))
    return apply(hr, kernels, s.scale, noise)


def degrade(key: jax.Array, hr: jax.Array, cfg: Any) -> jax.Array:
    """Classic LR synthesis: HR (B, H, W, C) in [0, 1] -> LR (B, H/s, W/s, C), 8-bit levels.

    Same draws as `degrade_full` for the same key; iso kernels take the separable fast
    path (`iso_blur_downscale`), aniso ones the 2-D blur of `apply`.
    """
    s = resolve(cfg)
    if s.blur != "iso" or s.skips_blur:
        return degrade_full(key, hr, s).lr
    check_hr(hr, s.scale, s.kernel_size)
    b, h, w, c = hr.shape
    k_kernel, k_noise = jax.random.split(key)
    sigma = kernel_params(k_kernel, s, b)["sigma"]
    lr = iso_blur_downscale(hr, sigma, s.scale, s.kernel_size)
    noise = sample_noise(k_noise, s, (b, h // s.scale, w // s.scale, c))
    return quantize(lr if noise is None else lr + noise)
