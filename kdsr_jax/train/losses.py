"""Training losses of KDSR (the official classic trainers and
KDSR-GAN models; BasicSR `L1Loss`, `PerceptualLoss`, `GANLoss`).

* `l1`: mean absolute error over all elements (nn.L1Loss / BasicSR L1Loss).
* `kd`: KL(softmax(T/tau) || softmax(S/tau)), summed over features, averaged over the
  batch ("batchmean"), no tau^2 factor, the teacher side treated as a constant.
* `bce_with_logits`: vanilla GAN loss, mean over all logits.
* `perceptual`: weighted per-layer L1 between VGG19 features (see `vgg.py`).
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax


def l1(pred: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(pred - target))


def kd(teacher_fea: jax.Array, student_fea: jax.Array, temperature: float) -> jax.Array:
    """Distillation loss of the 4C-dim encoder features, both (B, 4C)."""
    t = jax.lax.stop_gradient(teacher_fea).astype(jnp.float32) / temperature
    s = student_fea.astype(jnp.float32) / temperature
    log_p = jax.nn.log_softmax(t, axis=-1)
    log_q = jax.nn.log_softmax(s, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q)) / t.shape[0]


def bce_with_logits(logits: jax.Array, target_is_real: bool) -> jax.Array:
    labels = jnp.full_like(logits, 1.0 if target_is_real else 0.0)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels))


def perceptual(features_fn: Callable[[jax.Array], Mapping[str, jax.Array]],
               sr: jax.Array, gt: jax.Array,
               layer_weights: Mapping[str, float]) -> jax.Array:
    """sum_l w_l * mean|phi_l(sr) - phi_l(gt)| (BasicSR PerceptualLoss, style weight 0)."""
    f_sr = features_fn(sr)
    f_gt = features_fn(jax.lax.stop_gradient(gt))
    return sum(w * l1(f_sr[name], f_gt[name]) for name, w in layer_weights.items())
