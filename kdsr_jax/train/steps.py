"""Pure training steps of every KDSR stage: `step(state, batch, frozen) -> (state, metrics)`.

* classic teacher (reference/TRAINING.md §1.4): LR synthesised from the HR batch inside
  the step (`degradation.classic.degrade`, one kernel/noise level per global batch), L1.
* classic student (§1.5): frozen teacher encoder features T, student (sr, S);
  L1 + KD. With an encoder-only warm-up (aniso, §1.5) the loss is KD only and the
  generator gets no update (neither parameters nor its Adam state move).
* GAN teacher / student (§2.3-2.4): Real-ESRGAN second-order degradation + training-pair
  pool in the step; L1 (+ KD); EMA 0.999 of G.
* KDSRGAN_S (§2.5): G step (L1 + KD + perceptual + GAN, D frozen) then D step
  (real/fake BCE), EMA; V2: the teacher sees the USM-sharpened GT.

`batch = {'hr': uint8 (B, P, P, 3)}`; `frozen = {'teacher': variables, 'vgg': params}`
(only what the stage needs). Random numbers come from `fold_in(state.rng, state.step)`:
the step is one SPMD program over the global batch, so its draws do not depend on how
many devices or hosts run it (per-device streams would break that equivalence).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from kdsr_jax.train import losses, schedules
from kdsr_jax.train.state import TrainState, adam

Metrics = dict[str, jax.Array]
StepFn = Callable[[TrainState, dict, dict], tuple[TrainState, Metrics]]


def _to_float(images: jax.Array) -> jax.Array:
    """uint8 batch -> float32 in [0,1] (multiples of 1/255, TRAINING.md §1.1)."""
    return images.astype(jnp.float32) / 255.0


def _adam_apply(tx, params, grads, opt_state, lr):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
    return params, opt_state


def _apply_groups(tx, params, grads, opt_states, lr, groups=("G", "E")):
    """Adam per parameter group; groups not listed keep parameters and Adam state."""
    new_params, new_opt = dict(params), dict(opt_states)
    for g in groups:
        new_params[g], new_opt[g] = _adam_apply(tx, params[g], grads[g], opt_states[g], lr)
    return new_params, new_opt


def ema_update(ema, params, decay: float):
    """θ_ema ← decay·θ_ema + (1 − decay)·θ (BasicSR model_ema, TRAINING.md §2.2)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def _classic_lr(key, hr, cfg):
    from kdsr_jax.degradation import classic

    return classic.degrade(key, hr, cfg)


def _teacher_features(teacher, frozen, lr_img, hr):
    """The frozen teacher's 4C-dim distillation feature (TRAINING.md §0), no gradient."""
    _, t_fea = teacher.apply(frozen["teacher"], lr_img, hr, method="encode")
    return jax.lax.stop_gradient(t_fea)


def _student_l1_kd(model, params, lr_img, target, t_fea, temperature):
    """Student forward with (sr, L1(sr, target), KD(teacher || student)) (TRAINING.md §0)."""
    sr, feats = model.apply({"params": params}, lr_img, return_features=True)
    return sr, losses.l1(sr, target), losses.kd(t_fea, feats["fea"], temperature)


def make_classic_step(config: ml_collections.ConfigDict, model, teacher=None) -> StepFn:
    """Stage 3 (teacher) or stage 4 (student) of KDSR-classic."""
    schedule = schedules.from_config(config.schedule)
    tx = adam(config.optimizer)
    deg_cfg = config.degradation
    temperature = config.kd.temperature
    kd_weight = config.kd.weight
    is_student = config.stage == "student"
    enc_steps = 0
    if is_student and config.schedule.kind == "classic_epoch":
        enc_steps = config.schedule.encoder_epochs * config.schedule.steps_per_epoch

    def step(state: TrainState, batch, frozen):
        key = jax.random.fold_in(state.rng, state.step)
        hr = _to_float(batch["hr"])                              # (B, sP, sP, 3)
        lr_img = jax.lax.stop_gradient(_classic_lr(key, hr, deg_cfg))   # (B, P, P, 3)
        lr = schedule(state.step)

        if not is_student:
            def loss_fn(p):
                sr = model.apply({"params": p}, lr_img, hr)
                l1 = losses.l1(sr, hr)
                return l1, {"l1": l1}
        else:
            t_fea = _teacher_features(teacher, frozen, lr_img, hr)

            def loss_fn(p):
                _, l1, kd = _student_l1_kd(model, p, lr_img, hr, t_fea, temperature)
                return l1 + kd_weight * kd, {"l1": l1, "kd": kd}

            def enc_loss_fn(p_e, p_g):
                _, s_fea = model.apply({"params": {"G": p_g, "E": p_e}}, lr_img,
                                       method="encode")
                kd = losses.kd(t_fea, s_fea, temperature)
                return kd_weight * kd, {"l1": jnp.zeros(()), "kd": kd}

        def full_update(state):
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            params, opt = _apply_groups(tx, state.params, grads, state.opt_state, lr)
            return params, opt, loss, {**aux, "grad_norm": optax.tree.norm(grads)}

        def encoder_update(state):
            (loss, aux), g_e = jax.value_and_grad(enc_loss_fn, has_aux=True)(
                state.params["E"], state.params["G"])
            params, opt = _apply_groups(tx, state.params, {"E": g_e}, state.opt_state, lr,
                                        groups=("E",))
            return params, opt, loss, {**aux, "grad_norm": optax.tree.norm(g_e)}

        if enc_steps > 0:
            params, opt, loss, aux = jax.lax.cond(
                state.step < enc_steps, encoder_update, full_update, state)
        else:
            params, opt, loss, aux = full_update(state)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt)
        return new_state, {"loss": loss, "lr": lr, **aux}

    return step


def _pool_update(pool, gt, lq, key):
    """Training-pair pool (DEGRADATION.md §2.3); identity while the pool is disabled."""
    if not pool:
        return pool, gt, lq
    from kdsr_jax.degradation import pool as pool_lib

    pool, batch = pool_lib.update(pool, {"gt": gt, "lq": lq}, key)
    return pool, batch["gt"], batch["lq"]


def make_gan_step(config: ml_collections.ConfigDict, model, teacher=None,
                  discriminator=None) -> StepFn:
    """KDSRNet_T (`gan_teacher`), KDSRNet_S (`gan_student`) or KDSRGAN_S (`gan`)."""
    from kdsr_jax.degradation import realesrgan, sharpen
    from kdsr_jax.train import vgg as vgg_lib

    schedule = schedules.from_config(config.schedule)
    tx = adam(config.optimizer)
    deg_cfg = config.degradation
    stage = config.stage
    ema_decay = config.ema_decay
    temperature, kd_weight = config.kd.temperature, config.kd.weight
    if stage == "gan":
        layer_weights = dict(config.perceptual.layer_weights)
        vgg_net = vgg_lib.VGG19Features(layers=tuple(layer_weights))
        perceptual_weight, gan_weight = config.perceptual.weight, config.gan_weight
        usm_teacher = config.usm_teacher_gt
        d_lr = config.d_lr

    def step(state: TrainState, batch, frozen):
        key = jax.random.fold_in(state.rng, state.step)
        k_deg, k_pool = jax.random.split(key)
        gt, lq = realesrgan.degrade(k_deg, _to_float(batch["hr"]), deg_cfg)
        pool, gt, lq = _pool_update(state.pool, gt, lq, k_pool)
        gt, lq = jax.lax.stop_gradient(gt), jax.lax.stop_gradient(lq)
        lr = schedule(state.step)
        metrics = {"lr": lr}
        d_state = {}

        if stage == "gan_teacher":
            def loss_fn(p):
                l1 = losses.l1(model.apply({"params": p}, lq, gt), gt)
                return l1, ({"l1": l1}, None)
        else:
            # V2 (§2.5): the teacher's HR input is the USM-sharpened GT.
            t_hr = sharpen.usm(gt) if stage == "gan" and usm_teacher else gt
            t_fea = _teacher_features(teacher, frozen, lq, t_hr)

            def loss_fn(p):
                sr, l1, kd = _student_l1_kd(model, p, lq, gt, t_fea, temperature)
                aux = {"l1": l1, "kd": kd}
                total = l1 + kd_weight * kd
                if stage != "gan":
                    return total, (aux, None)
                if perceptual_weight:
                    features = lambda x: vgg_net.apply({"params": frozen["vgg"]}, x)
                    percep = losses.perceptual(features, sr, gt, layer_weights)
                else:       # --config.perceptual.weight=0: no VGG19 at all
                    percep = jnp.zeros((), jnp.float32)
                # G step with D frozen (no D gradient); D's power iteration still runs.
                logits, d_vars = discriminator.apply(
                    {"params": jax.lax.stop_gradient(state.d_params),
                     "spectral": state.d_spectral}, sr, train=True, mutable=["spectral"])
                g_gan = losses.bce_with_logits(logits, True)
                total = total + perceptual_weight * percep + gan_weight * g_gan
                return total, ({**aux, "perceptual": percep, "g_gan": g_gan},
                               (sr, d_vars["spectral"]))

        (loss, (aux, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        params, opt = _apply_groups(tx, state.params, grads, state.opt_state, lr)
        metrics.update(aux, loss=loss, grad_norm=optax.tree.norm(grads))

        if stage == "gan":
            sr, spectral = extra
            sr = jax.lax.stop_gradient(sr)

            def d_loss_fn(dp):
                real, v1 = discriminator.apply({"params": dp, "spectral": spectral}, gt,
                                               train=True, mutable=["spectral"])
                fake, v2 = discriminator.apply({"params": dp, "spectral": v1["spectral"]}, sr,
                                               train=True, mutable=["spectral"])
                l_real = losses.bce_with_logits(real, True)
                l_fake = losses.bce_with_logits(fake, False)
                return l_real + l_fake, (v2["spectral"], l_real, l_fake)

            (d_loss, (spectral, l_real, l_fake)), d_grads = jax.value_and_grad(
                d_loss_fn, has_aux=True)(state.d_params)
            d_params, d_opt = _adam_apply(tx, state.d_params, d_grads, state.d_opt_state, d_lr)
            d_state = dict(d_params=d_params, d_spectral=spectral, d_opt_state=d_opt)
            metrics.update(d_real=l_real, d_fake=l_fake, d_loss=d_loss)

        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt,
                                  ema_params=ema_update(state.ema_params, params, ema_decay),
                                  pool=pool, **d_state)
        return new_state, metrics

    return step
