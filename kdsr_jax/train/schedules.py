"""Learning-rate schedules of the official trainers, as optax schedules of the step.

The step `s` counts optimizer updates from 0 (the first update has s = 0).

* Classic (`trainer_*_stage{3,4}.py`): the learning rate is set per *epoch* of
  `steps_per_epoch` (971) iterations, epochs numbered e = s // steps_per_epoch + 1:
  `lr_encoder · gamma_encoder^⌊e / decay_encoder⌋` during the encoder-only warm-up
  (e <= encoder_epochs), then `lr · gamma^⌊(e - encoder_epochs) / decay⌋`.
* GAN stages (`KDSRNetSTModel`, `KDSRGANSTModel`): iterations are numbered it = s + 1 and
  the G learning rate is `lr · gamma^⌊it / decay_steps⌋` (a per-iteration override).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def classic_epoch_schedule(*, lr: float, gamma: float, decay_epochs: int,
                           steps_per_epoch: int, encoder_epochs: int = 0,
                           lr_encoder: float = 0.0, gamma_encoder: float = 1.0,
                           decay_encoder_epochs: int = 1) -> optax.Schedule:
    """The per-epoch formula of `trainer_*_stage{3,4}.py`."""

    def schedule(step):
        epoch = jnp.asarray(step) // steps_per_epoch + 1
        sr_lr = lr * gamma ** ((epoch - encoder_epochs) // decay_epochs)
        if encoder_epochs <= 0:
            return sr_lr
        enc_lr = lr_encoder * gamma_encoder ** (epoch // decay_encoder_epochs)
        return jnp.where(epoch <= encoder_epochs, enc_lr, sr_lr)

    return schedule


def iteration_schedule(*, lr: float, gamma: float, decay_steps: int) -> optax.Schedule:
    """`lr · gamma^⌊it / decay_steps⌋` with 1-based iterations (KDSR-GAN student models)."""

    def schedule(step):
        iteration = jnp.asarray(step) + 1
        return lr * gamma ** (iteration // decay_steps)

    return schedule


def from_config(cfg) -> optax.Schedule:
    """Builds the schedule described by a config's `schedule` ConfigDict."""
    if cfg.kind == "classic_epoch":
        return classic_epoch_schedule(
            lr=cfg.lr, gamma=cfg.gamma, decay_epochs=cfg.decay_epochs,
            steps_per_epoch=cfg.steps_per_epoch, encoder_epochs=cfg.encoder_epochs,
            lr_encoder=cfg.lr_encoder, gamma_encoder=cfg.gamma_encoder,
            decay_encoder_epochs=cfg.decay_encoder_epochs)
    if cfg.kind == "iteration":
        return iteration_schedule(lr=cfg.lr, gamma=cfg.gamma, decay_steps=cfg.decay_steps)
    raise ValueError(f"unknown schedule kind {cfg.kind!r} (use 'classic_epoch' or 'iteration')")
