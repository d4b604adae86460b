"""Periodic evaluation during training: PSNR/SSIM on Y of held-out images.

Held-out HR photos (the bundled 'heldout' split by default, or an image folder) are
centre-cropped to at most `eval.max_side` pixels, cropped to a multiple of the scale,
and degraded once with the classic pipeline in deterministic-kernel mode
(reference/EVALUATION.md §1.2: fixed Gaussian kernel, bicubic x1/s, optional noise,
8-bit LR). Metrics are the official classic ones (`kdsr_jax.evaluate.psnr_y/ssim_y`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from kdsr_jax import evaluate
from kdsr_jax.data import images, samples

EVAL_NOISE_SEED = 1   # EVALUATION.md §1.2: torch.manual_seed(1) for the test noise


@dataclass
class EvalPair:
    name: str
    hr: np.ndarray    # float32 (H, W, 3) in [0,1]
    lr: np.ndarray    # float32 (H/s, W/s, 3), 8-bit levels / 255


def _load_hr(split_or_folder: str, num_images: int) -> list[tuple[str, np.ndarray]]:
    if split_or_folder in samples.SPLITS:
        items = samples.bundled_images(split_or_folder)
    elif os.path.isdir(split_or_folder):
        names = sorted(f for f in os.listdir(split_or_folder)
                       if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")))
        items = [(n, images.load_image(os.path.join(split_or_folder, n))) for n in names]
    else:
        raise ValueError(f"eval.split must be a bundled split {samples.SPLITS} or an image "
                         f"folder, got {split_or_folder!r}")
    if not items:
        raise ValueError(f"no evaluation images in {split_or_folder!r}")
    return items[:num_images] if num_images > 0 else items


def crop_hr(img: np.ndarray, max_side: int, scale: int) -> np.ndarray:
    """Centre crop to at most `max_side`, then top-left crop to a multiple of `scale`."""
    h, w = img.shape[:2]
    if max_side > 0:
        th, tw = min(h, max_side), min(w, max_side)
        top, left = (h - th) // 2, (w - tw) // 2
        img = img[top:top + th, left:left + tw]
        h, w = th, tw
    return img[:h - h % scale, :w - w % scale]


def degrade_fixed(hr: np.ndarray, eval_cfg, scale: int) -> np.ndarray:
    """The deterministic classic degradation of one HR image (H, W, 3) -> LR."""
    from kdsr_jax.degradation import classic

    cfg = classic.test_config(
        scale=scale, blur_type=eval_cfg.blur_type, sig=eval_cfg.sig,
        lambda_1=eval_cfg.lambda_1, lambda_2=eval_cfg.lambda_2, theta=eval_cfg.theta,
        noise=eval_cfg.noise)
    lr = classic.degrade(jax.random.PRNGKey(EVAL_NOISE_SEED), jnp.asarray(hr)[None], cfg)
    return np.asarray(lr[0])


def make_pairs(eval_cfg, scale: int) -> list[EvalPair]:
    pairs = []
    for name, img in _load_hr(eval_cfg.split, eval_cfg.num_images):
        hr = crop_hr(img, eval_cfg.max_side, scale).astype(np.float32) / 255.0
        pairs.append(EvalPair(name, hr, degrade_fixed(hr, eval_cfg, scale)))
    return pairs


def make_predict(model):
    """Jitted batch-1 forward: teacher (lr, hr) -> sr, student lr -> sr."""
    if model.spec.kind == "teacher":
        fn = jax.jit(lambda p, lr, hr: model.apply({"params": p}, lr, hr))
        return lambda p, pair: fn(p, pair.lr[None], pair.hr[None])[0]
    fn = jax.jit(lambda p, lr: model.apply({"params": p}, lr))
    return lambda p, pair: fn(p, pair.lr[None])[0]


def to_uint8(x) -> np.ndarray:
    return np.round(np.clip(np.asarray(x, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The 'bicubic' baseline: the classic pipeline's bicubic x`scale` of the LR."""
    from kdsr_jax.degradation import bicubic

    return np.asarray(bicubic.upscale(jnp.asarray(lr)[None], scale)[0])


def run(predict, params, pairs: list[EvalPair], scale: int):
    """Mean PSNR/SSIM (Y) over `pairs` and the uint8 SR images."""
    psnrs, ssims, outputs = [], [], []
    for pair in pairs:
        sr = to_uint8(predict(params, pair))
        hr = to_uint8(pair.hr)
        psnrs.append(evaluate.psnr_y(sr, hr, scale))
        ssims.append(evaluate.ssim_y(sr, hr, scale))
        outputs.append(sr)
    return {"psnr_y": float(np.mean(psnrs)), "ssim_y": float(np.mean(ssims))}, outputs


def triplet(pair: EvalPair, sr_uint8: np.ndarray, scale: int) -> np.ndarray:
    """[LR (nearest-upscaled) | SR | HR] side by side, uint8 HWC, for TensorBoard."""
    lr_up = np.repeat(np.repeat(to_uint8(pair.lr), scale, axis=0), scale, axis=1)
    return np.concatenate([lr_up, sr_uint8, to_uint8(pair.hr)], axis=1)
