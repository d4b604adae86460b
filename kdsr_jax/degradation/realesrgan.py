"""Real-ESRGAN second-order degradation of KDSR-GAN, shape-static for one compilation.

Implements steps 1–10 of the `feed_data` of the KDSR-GAN models (`kdsrgan/models/*.py`,
identical to Real-ESRGAN's `RealESRGANModel.feed_data`) plus the per-sample kernels of
the dataset (`RealESRGANDataset`, see `random_kernels`), with explicit
`jax.random` keys:

 1. blur with per-sample `kernel1`;
 2. random resize (type up/down/keep, factor, mode: one draw per batch);
 3. Gaussian or Poisson noise (one coin per batch, per-sample levels and gray flags);
 4. JPEG with per-sample quality;
 5. second blur with `kernel2` (one coin per batch);
 6. random resize to int(ori/scale·f) (relative to the final LR size);
 7. second noise;
 8. one coin per batch: [resize to ori/scale → sinc filter → JPEG] or
    [JPEG → resize → sinc filter];
 9. 8-bit rounding of the LR;
10. paired random crop (one top/left per batch, as BasicSR crops the batch tensor).

Per-batch decisions (resize type/factor/mode, noise type, second-blur coin, final order,
crop position) are single draws shared by the batch given to `degrade`, as the official
pipeline draws them with Python `random`/NumPy once per iteration and process; kernels,
noise levels, gray flags and JPEG qualities are per sample. Training calls
`degrade_groups`, which gives each group of 9 images (the official per-process batch)
its own draws. The distribution is the official one; the random streams are not
(explicit JAX keys instead of the per-rank seeded Python/NumPy/torch generators).

Why a canvas. The random resizes change the image size every step (60…600 px after the
first resize, 30…120 after the second). Static shapes per size would recompile XLA for
almost every step. Instead the image lives in the top-left corner of a fixed canvas
(ceil(ori·1.5) and ceil(ori/scale·1.2) px; zeros outside) and the valid size is a traced
int32 scalar:
* resizes use `interpolate.resize_in_canvas` (interpolation matrices built from the
  traced sizes, exact for the valid region); the three modes are the branches of a
  `lax.switch` on the traced mode index (modes are static in the resize code);
* noise counts distinct 8-bit values over the valid region only (Poisson) and zeroes
  the canvas outside it;
* JPEG blocks are anchored at the top-left and the padding is zeros, so compressing the
  zero canvas equals compressing the valid image alone inside it (`jpeg.compress`);
  the result is re-zeroed outside the valid region;
* the blurs are `fft_filter2d` (default) or `filters.filter2d` (cfg.blur_impl):
  the same function, the FFT being ~70x faster on CPU for per-sample kernels;
* the second blur must reflect at the *valid* border. We gather a reflect-extended copy
  of the valid image on a canvas 10 px (= 21 // 2) larger than the input canvas: every
  position p < n_valid + 10 holds the mirror image value reflect(p, n_valid) (NumPy
  'reflect', valid because n_valid > 10). filter2D on that array then reads,
  for every output pixel inside the valid region, only correct mirrored values (its own
  reflection at the array's top/left border is the same mirror at index 0, and its
  bottom/right border lies ≥ 10 px beyond the valid region), so cropping gives exactly
  filter2D of the valid image;
* the optional second blur and the two final orders are `lax.cond` branches, so only
  the taken branch is computed.
The output distribution is therefore that of the official pipeline: each step sees the
same values it would see at the traced size. The cost is that every step works at the
largest canvas size.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from kdsr_jax.degradation import filters, interpolate, jpeg, noise, pool, random_kernels

# Resize types, in the order of the yml `resize_prob` lists (step 2).
RESIZE_TYPES = ("up", "down", "keep")
RESIZE_MODES = ("area", "bilinear", "bicubic")
# Step 8: the final order coin is a hard-coded 0.5 in feed_data.
FINAL_RESIZE_FIRST_PROB = 0.5
# BasicSR filter2D pads by k // 2 = 10 for the 21x21 kernels.
KERNEL_PAD = random_kernels.PAD_SIZE // 2
# RealESRGANDataset pads / crops every GT to 400x400 before the degradation (KDSR-GAN ymls).
GT_INPUT_SIZE = 400
# The KDSR-GAN ymls' batch_size_per_gpu 9 -- one set of batch-level draws and one pool
# per process of 9 images.
GROUP_SIZE = 9


def default_config() -> ml_collections.ConfigDict:
    """All values of the KDSR-GAN training ymls that the official pipeline reads
    (`RealESRGANDataset` + the models' `feed_data`), plus `group_size` and `blur_impl` (ours, see below)."""
    c = ml_collections.ConfigDict()
    # Sizes.
    c.scale = 4
    c.gt_size = 256            # GT crop; LQ crop = gt_size // scale = 64
    c.gt_input_size = GT_INPUT_SIZE   # `ori`: the dataset crops/pads GT to 400x400
    # The official runs draw the batch-level choices (resize type/factor/mode, noise
    # type, second-blur coin, final order/mode, crop position) once per process for
    # its 9 images and keep one pool per process. We draw them per group of
    # `group_size` images of the global batch, keys from (seed, step, group), and keep
    # one pool of `queue_size` pairs per group: the official grouping on any number of
    # devices.
    c.group_size = GROUP_SIZE
    c.queue_size = pool.QUEUE_SIZE     # training-pair pool per group (0 = no pool)
    # Kernels (RealESRGANDataset). The kernel size is drawn from kernel_range for all three kernels
    # (BasicSR hard-codes [7, 9, ..., 21] in the dataset); kernels are padded to
    # blur_kernel_size = 21 (the only value BasicSR supports: its pulse/pad are 21).
    c.kernel_range = list(random_kernels.KERNEL_SIZES)
    c.blur_kernel_size = random_kernels.PAD_SIZE
    c.kernel_list = list(random_kernels.KERNEL_TYPES)
    c.kernel_prob = list(random_kernels.KERNEL_PROBS)
    c.sinc_prob = 0.1
    c.blur_sigma = [0.2, 3.0]
    c.betag_range = [0.5, 4.0]
    c.betap_range = [1.0, 2.0]
    # Second-degradation kernels.
    c.kernel_list2 = list(random_kernels.KERNEL_TYPES)
    c.kernel_prob2 = list(random_kernels.KERNEL_PROBS)
    c.sinc_prob2 = 0.1
    c.blur_sigma2 = [0.2, 1.5]
    c.betag_range2 = [0.5, 4.0]
    c.betap_range2 = [1.0, 2.0]
    c.final_sinc_prob = 0.8
    # How the 21x21 per-sample blurs are computed (not in the ymls; see `blur`):
    # 'fft' (default; ~70x faster on CPU, within 4e-7 of filter2D) or 'direct'
    # (`filters.filter2d`, a grouped convolution).
    c.blur_impl = "fft"
    # First degradation (steps 2–4).
    c.resize_prob = [0.2, 0.7, 0.1]    # up, down, keep
    c.resize_range = [0.15, 1.5]
    c.gaussian_noise_prob = 0.5
    c.noise_range = [1.0, 30.0]
    c.poisson_scale_range = [0.05, 3.0]
    c.gray_noise_prob = 0.4
    c.jpeg_range = [30.0, 95.0]
    # Second degradation (steps 5–8).
    c.second_blur_prob = 0.8
    c.resize_prob2 = [0.3, 0.4, 0.3]
    c.resize_range2 = [0.3, 1.2]
    c.gaussian_noise_prob2 = 0.5
    c.noise_range2 = [1.0, 25.0]
    c.poisson_scale_range2 = [0.05, 2.5]
    c.gray_noise_prob2 = 0.4
    c.jpeg_range2 = [30.0, 95.0]
    c.final_resize_first_prob = FINAL_RESIZE_FIRST_PROB
    # The ymls' gt_usm / l1_gt_usm / percep_gt_usm / gan_gt_usm flags are not fields:
    # in the official models only the teacher's HR input of KDSRGAN_S V2 is the
    # USM-sharpened GT (config `usm_teacher_gt` of configs/gan.py); nothing else reads them.
    return c


def check_config(cfg) -> None:
    """ValueError naming the field for a value the pipeline cannot honour."""
    random_kernels.check_kernel_choice(cfg.kernel_list, cfg.kernel_prob)
    random_kernels.check_kernel_choice(cfg.kernel_list2, cfg.kernel_prob2,
                                       ("kernel_list2", "kernel_prob2"))
    random_kernels.check_kernel_range(cfg.kernel_range)
    if cfg.blur_kernel_size != random_kernels.PAD_SIZE:
        raise ValueError(f"blur_kernel_size={cfg.blur_kernel_size}: kernels are padded to "
                         f"{random_kernels.PAD_SIZE}x{random_kernels.PAD_SIZE} as in BasicSR "
                         "(which stores this field but never reads it); choose sizes with "
                         "kernel_range")
    for name in ("resize_prob", "resize_prob2"):
        probs = cfg[name]
        if len(probs) != len(RESIZE_TYPES) or min(probs) < 0 or sum(probs) <= 0:
            raise ValueError(f"{name}={list(probs)}: three weights >= 0 for "
                             f"{RESIZE_TYPES}")
    if cfg.get("blur_impl", "fft") not in BLUR_IMPLS:
        raise ValueError(f"blur_impl={cfg.blur_impl!r}; expected one of {BLUR_IMPLS}")


# --------------------------------------------------------------------------------------
# Static geometry.
# --------------------------------------------------------------------------------------

class _Geometry:
    """Static sizes derived from the config and the GT shape."""

    def __init__(self, cfg, gt_hw):
        self.ori = tuple(int(v) for v in gt_hw)
        self.scale = int(cfg.scale)
        self.lq = tuple(v // self.scale for v in self.ori)           # final LR size
        self.lq_patch = int(cfg.gt_size) // self.scale
        self.gt_patch = self.lq_patch * self.scale
        self.canvas1 = tuple(int(math.ceil(v * cfg.resize_range[1])) for v in self.ori)
        self.canvas2 = tuple(int(math.ceil(v / self.scale * cfg.resize_range2[1]))
                             for v in self.ori)
        self.min1 = tuple(int(math.floor(v * cfg.resize_range[0])) for v in self.ori)


def _check_gt(gt, cfg) -> _Geometry:
    fn = "realesrgan.degrade"
    shape = getattr(gt, "shape", None)
    dtype = getattr(gt, "dtype", None)
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{fn}: expected a GT batch (B, H, W, 3) NHWC, got shape {shape}")
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{fn}: expected a float GT image in [0, 1], got dtype {dtype} "
                         f"for shape {tuple(shape)}")
    if shape[0] < 1:
        raise ValueError(f"{fn}: empty batch, shape {tuple(shape)}")
    impl = cfg.get("blur_impl", "fft")
    if impl not in BLUR_IMPLS:
        raise ValueError(f"{fn}: unknown cfg.blur_impl {impl!r}; expected one of "
                         f"{BLUR_IMPLS}")
    geo = _Geometry(cfg, shape[1:3])
    if min(geo.lq) < geo.lq_patch:
        raise ValueError(f"{fn}: GT shape {tuple(shape)} too small: its LR "
                         f"({geo.lq[0]}x{geo.lq[1]}) is smaller than the LQ crop "
                         f"{geo.lq_patch} (gt_size {cfg.gt_size} / scale {cfg.scale})")
    if min(geo.min1) <= KERNEL_PAD or min(geo.lq) <= KERNEL_PAD:
        raise ValueError(f"{fn}: GT shape {tuple(shape)} too small: the smallest resized "
                         f"image {geo.min1} and the LR {geo.lq} must exceed {KERNEL_PAD} px "
                         f"for the 21x21 reflect-padded blur")
    return geo


# --------------------------------------------------------------------------------------
# Random decisions.
# --------------------------------------------------------------------------------------

def _resize_factor(key, probs, value_range):
    k_type, k_up, k_down = jax.random.split(key, 3)
    kind = jax.random.choice(k_type, 3, p=jnp.asarray(probs, jnp.float32))
    up = jax.random.uniform(k_up, (), jnp.float32, 1.0, value_range[1])
    down = jax.random.uniform(k_down, (), jnp.float32, value_range[0], 1.0)
    return jnp.select([kind == 0, kind == 1], [up, down], jnp.float32(1.0))


def _noise_decisions(key, batch, gaussian_prob, sigma_range, scale_range, gray_prob):
    k_coin, k_sigma, k_scale, k_gray = jax.random.split(key, 4)
    return {
        "gaussian": jax.random.uniform(k_coin) < gaussian_prob,
        "sigma": jax.random.uniform(k_sigma, (batch,), jnp.float32, *sigma_range),
        "poisson_scale": jax.random.uniform(k_scale, (batch,), jnp.float32, *scale_range),
        "gray": (jax.random.uniform(k_gray, (batch,)) < gray_prob).astype(jnp.float32),
    }


def sample_decisions(key, batch_size: int, cfg, gt_hw=None) -> dict[str, Any]:
    """Every random choice of one `degrade` call except the kernels (a pytree).

    Keys: resize1_factor, resize1_mode, noise1 {gaussian, sigma, poisson_scale, gray},
    jpeg1_quality (B,), second_blur, resize2_factor, resize2_mode, noise2 {...},
    final_resize_first, final_mode, jpeg2_quality (B,), crop_top, crop_left, noise_keys.
    """
    ori = tuple(gt_hw) if gt_hw is not None else (cfg.gt_input_size,) * 2
    lq_hw = tuple(v // cfg.scale for v in ori)
    lq_patch = cfg.gt_size // cfg.scale
    ks = jax.random.split(key, 14)
    modes = len(RESIZE_MODES)
    return {
        "resize1_factor": _resize_factor(ks[0], cfg.resize_prob, cfg.resize_range),
        "resize1_mode": jax.random.randint(ks[1], (), 0, modes),
        "noise1": _noise_decisions(ks[2], batch_size, cfg.gaussian_noise_prob,
                                   cfg.noise_range, cfg.poisson_scale_range,
                                   cfg.gray_noise_prob),
        "jpeg1_quality": jax.random.uniform(ks[3], (batch_size,), jnp.float32,
                                            *cfg.jpeg_range),
        "second_blur": jax.random.uniform(ks[4]) < cfg.second_blur_prob,
        "resize2_factor": _resize_factor(ks[5], cfg.resize_prob2, cfg.resize_range2),
        "resize2_mode": jax.random.randint(ks[6], (), 0, modes),
        "noise2": _noise_decisions(ks[7], batch_size, cfg.gaussian_noise_prob2,
                                   cfg.noise_range2, cfg.poisson_scale_range2,
                                   cfg.gray_noise_prob2),
        "final_resize_first": jax.random.uniform(ks[8]) < cfg.final_resize_first_prob,
        "final_mode": jax.random.randint(ks[9], (), 0, modes),
        "jpeg2_quality": jax.random.uniform(ks[10], (batch_size,), jnp.float32,
                                            *cfg.jpeg_range2),
        # BasicSR paired_random_crop: random.randint(0, h_lq - lq_size), inclusive.
        "crop_top": jax.random.randint(ks[11], (), 0, lq_hw[0] - lq_patch + 1),
        "crop_left": jax.random.randint(ks[12], (), 0, lq_hw[1] - lq_patch + 1),
        "noise_keys": jax.random.split(ks[13], 2),
    }


# --------------------------------------------------------------------------------------
# Blur.
# --------------------------------------------------------------------------------------

BLUR_IMPLS = ("fft", "direct")


def fft_filter2d(img, kernels):
    """BasicSR filter2D (reflect pad k//2, per-sample depthwise correlation) by FFT.

    img (B, H, W, C), kernels (B, k, k). Same function as `filters.filter2d`; on CPU
    XLA's grouped convolution for per-sample 21x21 kernels is ~70x slower than this
    (batch 16 of 400x400: ~35 s vs ~0.5 s on the shared 2-core machine). The circular
    correlation of the padded image with the zero-extended kernel never wraps for the
    kept outputs (y + i ≤ H − 1 + k − 1 = Hp − 1). float32 FFT rounding: ≲ 1e-6 abs.
    """
    kernels = jnp.asarray(kernels, jnp.float32)
    b, h, w, _ = img.shape
    k = kernels.shape[-1]
    padded = filters.reflect_pad(img.astype(jnp.float32), k // 2)     # (B, Hp, Wp, C)
    hp, wp = padded.shape[1:3]
    kernels = jnp.broadcast_to(kernels.reshape(-1, k, k), (b, k, k))
    kz = jnp.zeros((b, hp, wp), jnp.float32).at[:, :k, :k].set(kernels)
    spectrum = (jnp.fft.rfft2(padded, axes=(1, 2))
                * jnp.conj(jnp.fft.rfft2(kz, axes=(1, 2)))[..., None])
    out = jnp.fft.irfft2(spectrum, s=(hp, wp), axes=(1, 2))
    return out[:, :h, :w].astype(jnp.float32)


def blur(img, kernels, impl: str = "fft"):
    """filter2D with the chosen implementation (`BLUR_IMPLS`)."""
    if impl == "fft":
        return fft_filter2d(img, kernels)
    if impl == "direct":
        return filters.filter2d(img, kernels)
    raise ValueError(f"realesrgan.blur: unknown blur_impl {impl!r}; expected one of "
                     f"{BLUR_IMPLS}")


# --------------------------------------------------------------------------------------
# Canvas operations.
# --------------------------------------------------------------------------------------

def _mask(img, valid_hw):
    return jnp.where(noise.valid_mask(img.shape[1:3], valid_hw), img, 0.0)


def _reflect_index(n_out: int, n_valid):
    """Indices 0..n_out-1 mirrored at the valid border (NumPy 'reflect' for p < 2n-1)."""
    p = jnp.arange(n_out)
    last = n_valid - 1
    return jnp.clip(jnp.where(p > last, 2 * last - p, p), 0, None)


def filter2d_in_canvas(img, kernels, valid_hw, impl: str = "fft"):
    """filter2D (reflect at the *valid* border) of the top-left valid region of a canvas.

    img (B, Hc, Wc, C); valid sizes traced, each > 10. Returns the canvas with the
    filtered valid region and zeros elsewhere (see module docstring for the proof).
    """
    _, hc, wc, _ = img.shape
    rows = _reflect_index(hc + KERNEL_PAD, valid_hw[0])
    cols = _reflect_index(wc + KERNEL_PAD, valid_hw[1])
    extended = img[:, rows][:, :, cols]                   # (B, Hc+10, Wc+10, C)
    out = blur(extended, kernels, impl)[:, :hc, :wc]
    return _mask(out, valid_hw)


def _resize_switch(img, mode_index, in_hw, out_hw, canvas_hw, scale_factor=None):
    branches = [functools.partial(interpolate.resize_in_canvas, in_hw=in_hw, out_hw=out_hw,
                                  canvas_hw=canvas_hw, mode=m, scale_factor=scale_factor)
                for m in RESIZE_MODES]
    return jax.lax.switch(mode_index, branches, img)


def _add_noise(key, img, d, valid_hw):
    def gaussian(x):
        return noise.add_gaussian_noise(key, x, d["sigma"], d["gray"], valid_hw)

    def poisson(x):
        return noise.add_poisson_noise(key, x, d["poisson_scale"], d["gray"], valid_hw)

    return jax.lax.cond(d["gaussian"], gaussian, poisson, img)


def _jpeg_in_canvas(img, quality, valid_hw):
    return _mask(jpeg.compress(jnp.clip(img, 0.0, 1.0), quality), valid_hw)


def degrade_with(gt, kernels, decisions, cfg):
    """Steps 1–8 with explicit kernels and decisions: the unrounded LR.

    gt (B, H, W, 3) float in [0, 1]; kernels from `random_kernels.sample_kernels`;
    decisions from `sample_decisions`. Returns (B, H//scale, W//scale, 3) float32.
    """
    geo = _check_gt(gt, cfg)
    d = decisions
    gt = gt.astype(jnp.float32)
    i32 = jnp.int32

    # ---- first degradation ----
    impl = cfg.get("blur_impl", "fft")
    out = blur(gt, kernels["kernel1"], impl)
    f1 = d["resize1_factor"].astype(jnp.float32)
    n1 = tuple(jnp.clip(jnp.floor(jnp.float32(v) * f1).astype(i32), 1, c)
               for v, c in zip(geo.ori, geo.canvas1))
    out = _resize_switch(out, d["resize1_mode"], geo.ori, n1, geo.canvas1, scale_factor=f1)
    out = _add_noise(d["noise_keys"][0], out, d["noise1"], n1)
    out = _jpeg_in_canvas(out, d["jpeg1_quality"], n1)

    # ---- second degradation ----
    out = jax.lax.cond(d["second_blur"],
                       lambda x: filter2d_in_canvas(x, kernels["kernel2"], n1, impl),
                       lambda x: x, out)
    f2 = d["resize2_factor"].astype(jnp.float32)
    n2 = tuple(jnp.clip(jnp.floor(jnp.float32(v / geo.scale) * f2).astype(i32), 1, c)
               for v, c in zip(geo.ori, geo.canvas2))
    out = _resize_switch(out, d["resize2_mode"], n1, n2, geo.canvas2)
    out = _add_noise(d["noise_keys"][1], out, d["noise2"], n2)

    def resize_first(x):
        x = _resize_switch(x, d["final_mode"], n2, geo.lq, geo.lq)
        x = blur(x, kernels["sinc_kernel"], impl)
        return jpeg.compress(jnp.clip(x, 0.0, 1.0), d["jpeg2_quality"])

    def jpeg_first(x):
        x = _jpeg_in_canvas(x, d["jpeg2_quality"], n2)
        x = _resize_switch(x, d["final_mode"], n2, geo.lq, geo.lq)
        return blur(x, kernels["sinc_kernel"], impl)

    return jax.lax.cond(d["final_resize_first"], resize_first, jpeg_first, out)


def quantize(x):
    """Step 9: clamp(round(255·x), 0, 255) / 255 (round half to even, as torch)."""
    return jnp.clip(jnp.round(x * 255.0), 0.0, 255.0) / 255.0


def paired_crop(gt, lq, top, left, lq_patch: int, scale: int):
    """Step 10: LQ crop at (top, left), GT crop at (scale·top, scale·left)."""
    b = gt.shape[0]
    lq_out = jax.lax.dynamic_slice(lq, (0, top, left, 0), (b, lq_patch, lq_patch, 3))
    gp = lq_patch * scale
    gt_out = jax.lax.dynamic_slice(gt, (0, top * scale, left * scale, 0), (b, gp, gp, 3))
    return gt_out, lq_out


def degrade_parts(gt, kernels, decisions, cfg) -> dict[str, jax.Array]:
    """Steps 1–10 with explicit kernels and decisions.

    Returns {'gt_patch', 'lq_patch'} (the `degrade` outputs) and 'lq_full', the
    unrounded (B, H//scale, W//scale, 3) LR before step 9.
    """
    geo = _check_gt(gt, cfg)
    lq_full = degrade_with(gt, kernels, decisions, cfg)
    gt_patch, lq_patch = paired_crop(gt.astype(jnp.float32), quantize(lq_full),
                                     decisions["crop_top"], decisions["crop_left"],
                                     geo.lq_patch, geo.scale)
    return {"gt_patch": gt_patch, "lq_patch": lq_patch, "lq_full": lq_full}


def sample_all(key, batch_size: int, cfg, gt_hw=None):
    """(kernels, decisions) for one batch: everything random in `degrade`."""
    k_kernels, k_decisions = jax.random.split(key)
    kernels = random_kernels.sample_kernels(k_kernels, batch_size, cfg)
    return kernels, sample_decisions(k_decisions, batch_size, cfg, gt_hw)


def degrade(key, gt, cfg):
    """The Real-ESRGAN degradation of one batch: (gt_patch, lq_patch).

    gt: (B, H, W, 3) float in [0, 1] (H = W = GT_INPUT_SIZE = 400 in training).
    Returns GT (B, gt_size, gt_size, 3) and 8-bit-valued LQ (B, gt_size/scale, …, 3)
    patches, float32. Traceable: every size is a traced value, so a jitted caller
    compiles once for all keys. `make_degrade_fn` gives a ready jitted version.
    """
    geo = _check_gt(gt, cfg)
    kernels, decisions = sample_all(key, gt.shape[0], cfg, geo.ori)
    out = degrade_parts(gt, kernels, decisions, cfg)
    return out["gt_patch"], out["lq_patch"]


def degrade_groups(key, gt, cfg, per_group=None, carry=None):
    """`degrade` per group of `cfg.group_size` images, as the official runs degrade each
    process's batch of 9 on its own: group g (images g·G … g·G + G − 1 of the global
    batch) splits `fold_in(key, g)` into its degradation key and a second key for
    `per_group`, so its result does not depend on the other groups or on how many
    devices run the step.

    gt (B, H, W, 3) float in [0, 1], B a multiple of G. `per_group(key, gt_patch,
    lq_patch, carry_g) -> (carry_g, gt_patch, lq_patch)` optionally post-processes each
    group with its own state `carry_g` (the training-pair pool), where `carry` is a
    pytree with a leading axis of one entry per group (or None). Groups run one after another (`lax.map`), which keeps
    the `lax.cond` branches of the pipeline (a vmap would compute every branch).
    Returns (carry, gt_patch (B, …), lq_patch (B, …)).
    """
    b = gt.shape[0]
    g = int(cfg.group_size)
    if g < 1 or b % g:
        raise ValueError(f"realesrgan.degrade_groups: batch {b} is not a multiple of "
                         f"group_size {g}")
    n = b // g
    groups = gt.reshape((n, g) + gt.shape[1:])

    def one(args):
        index, gt_g, carry_g = args
        k_deg, k_post = jax.random.split(jax.random.fold_in(key, index))
        gt_p, lq_p = degrade(k_deg, gt_g, cfg)
        if per_group is not None:
            carry_g, gt_p, lq_p = per_group(k_post, gt_p, lq_p, carry_g)
        return carry_g, gt_p, lq_p

    carry, gt_p, lq_p = jax.lax.map(one, (jnp.arange(n), groups, carry))
    return carry, gt_p.reshape((b,) + gt_p.shape[2:]), lq_p.reshape((b,) + lq_p.shape[2:])


class DegradeFn:
    """Jitted `degrade` for one config: `fn(key, gt) -> (gt_patch, lq_patch)`.

    Sampling (`sample`) and the image pipeline (`apply` = `degrade_parts`) are two
    jitted programs, each compiled once per GT shape; `apply` can be fed explicit
    kernels/decisions.
    """

    def __init__(self, cfg):
        self.cfg = ml_collections.ConfigDict(cfg.to_dict() if hasattr(cfg, "to_dict")
                                             else dict(cfg))
        self.sample = jax.jit(functools.partial(sample_all, cfg=self.cfg),
                              static_argnames=("batch_size", "gt_hw"))
        self.apply = jax.jit(functools.partial(degrade_parts, cfg=self.cfg))

    def __call__(self, key, gt):
        geo = _check_gt(gt, self.cfg)
        kernels, decisions = self.sample(key, batch_size=gt.shape[0], gt_hw=geo.ori)
        out = self.apply(gt, kernels, decisions)
        return out["gt_patch"], out["lq_patch"]


def _cfg_key(cfg) -> str:
    return json.dumps(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg),
                      sort_keys=True)


@functools.lru_cache(maxsize=8)
def _cached_fn(cfg_json: str) -> DegradeFn:
    return DegradeFn(ml_collections.ConfigDict(json.loads(cfg_json)))


def make_degrade_fn(cfg) -> DegradeFn:
    """The (cached) `DegradeFn` of this config."""
    return _cached_fn(_cfg_key(cfg))
