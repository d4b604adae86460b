"""The training step of each KDSR stage: `step(state, batch, frozen) -> (state, metrics)`.

The paper trains in two stages (KDSR §3): first the teacher KDSR_T, whose KD-IDE
sees LR and HR; then the student KDSR_S, whose KD-IDE sees only the LR and learns to
reproduce the teacher's IDR through the KD loss. One factory per stage:

* `make_teacher_step`      classic stage 3 (`trainer_*_stage3.py`): LR synthesised from
                           the HR batch inside the step (one kernel/noise per batch), L1.
* `make_student_step`      classic stage 4 (`trainer_*_stage4.py`): L1 + KD against the
                           frozen teacher; with `schedule.encoder_epochs` > 0 (aniso) a
                           KD-only warm-up of the student's KD-IDE comes first.
* `make_gan_teacher_step`  KDSRNet_T (`KDSRNetTAModel`): Real-ESRGAN degradation and
                           training-pair pools in the step, L1, EMA of G.
* `make_gan_student_step`  KDSRNet_S (`KDSRNetSTModel`): L1 + KD, EMA.
* `make_kdsrgan_step`      KDSRGAN_S (`KDSRGANSTModel`): G step (L1 + KD + perceptual +
                           GAN, D frozen), then D step (real/fake BCE), EMA; V2: the
                           teacher sees the USM-sharpened GT.
`make_step(config, ...)` picks the factory of `config.stage`.

`batch = {'hr': uint8 (B, P, P, 3)}`; `frozen = {'teacher': variables, 'vgg': params}`
(what the stage needs). Random numbers come from `fold_in(state.rng, state.step)`:
the step is one SPMD program over the global batch, so its draws do not depend on how
many devices or hosts run it. Adam updates only the parameters the loss reads, as
torch.optim.Adam skips parameters without a gradient (`state.adam_update`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from kdsr_jax.degradation import classic, pool as pool_lib, realesrgan, sharpen
from kdsr_jax.train import losses, schedules, vgg as vgg_lib
from kdsr_jax.train.state import TrainState, adam, adam_update, reached_by

Metrics = dict[str, jax.Array]
StepFn = Callable[[TrainState, dict, dict], tuple[TrainState, Metrics]]


# ---------------------------------------------------------------- shared pieces --

def _to_float(images: jax.Array) -> jax.Array:
    """uint8 batch -> float32 in [0,1] (multiples of 1/255, as rgb_range 1)."""
    return images.astype(jnp.float32) / 255.0


def ema_update(ema, params, decay: float):
    """θ_ema ← decay·θ_ema + (1 − decay)·θ (BasicSR `model_ema`)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def _minimize(tx, loss_fn, params, opt_state, lr):
    """One Adam step on `loss_fn(params) -> (loss, aux)`; parameters the loss does not
    read keep their value and Adam state. Returns (params, opt_state, loss, aux)."""
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    received = reached_by(lambda p: loss_fn(p)[0], params)
    params, opt_state = adam_update(tx, params, grads, opt_state, lr, received)
    return params, opt_state, loss, {**aux, "grad_norm": optax.tree.norm(grads)}


def _teacher_features(teacher, frozen, lr_img, hr):
    """The frozen teacher KD-IDE's 4C-dim distillation feature (no gradient)."""
    _, t_fea = teacher.apply(frozen["teacher"], lr_img, hr, method="encode")
    return jax.lax.stop_gradient(t_fea)


def _student_l1_kd(model, params, lr_img, target, t_fea, temperature):
    """Student forward: (sr, L1(sr, target), KD(teacher || student)) (the paper's L1 and KD losses)."""
    sr, feats = model.apply({"params": params}, lr_img, return_features=True)
    return sr, losses.l1(sr, target), losses.kd(t_fea, feats["fea"], temperature)


def _classic_batch(state, batch, deg_cfg):
    """(hr, lr): HR patches in [0,1] and their LR, one random kernel/noise per batch."""
    key = jax.random.fold_in(state.rng, state.step)
    hr = _to_float(batch["hr"])                                      # (B, sP, sP, 3)
    lr_img = jax.lax.stop_gradient(classic.degrade(key, hr, deg_cfg))  # (B, P, P, 3)
    return hr, lr_img


def _gan_batch(state, batch, deg_cfg):
    """(pools, gt, lq): the Real-ESRGAN degradation drawn per group of
    `deg_cfg.group_size` images with keys from (seed, step, group), each group's pairs
    passed through its own training-pair pool (none when `state.pool` is empty)."""
    key = jax.random.fold_in(state.rng, state.step)

    def through_pool(k_pool, gt, lq, pool):
        pool, out = pool_lib.update(pool, {"gt": gt, "lq": lq}, k_pool)
        return pool, out["gt"], out["lq"]

    pools, gt, lq = realesrgan.degrade_groups(
        key, _to_float(batch["hr"]), deg_cfg,
        per_group=through_pool if state.pool else None,
        carry=state.pool if state.pool else None)
    return (pools if state.pool else {}), jax.lax.stop_gradient(gt), jax.lax.stop_gradient(lq)


# ------------------------------------------------------------- classic stages --

def make_teacher_step(config: ml_collections.ConfigDict, model) -> StepFn:
    """Classic stage 3: L1(KDSR_T(lr, hr), hr)."""
    schedule = schedules.from_config(config.schedule)
    tx = adam(config.optimizer)

    def step(state: TrainState, batch, frozen):
        del frozen
        hr, lr_img = _classic_batch(state, batch, config.degradation)
        lr = schedule(state.step)

        def loss_fn(p):
            l1 = losses.l1(model.apply({"params": p}, lr_img, hr), hr)
            return l1, {"l1": l1}

        params, opt, loss, aux = _minimize(tx, loss_fn, state.params, state.opt_state, lr)
        return (state.replace(step=state.step + 1, params=params, opt_state=opt),
                {"loss": loss, "lr": lr, **aux})

    return step


def make_student_step(config: ml_collections.ConfigDict, model, teacher) -> StepFn:
    """Classic stage 4: L1 + KD; during the first `encoder_epochs` epochs (aniso) the
    KD-only warm-up of the student's KD-IDE (the generator is not updated)."""
    schedule = schedules.from_config(config.schedule)
    tx = adam(config.optimizer)
    temperature, kd_weight = config.kd.temperature, config.kd.weight
    warmup_steps = config.schedule.encoder_epochs * config.schedule.steps_per_epoch

    def step(state: TrainState, batch, frozen):
        hr, lr_img = _classic_batch(state, batch, config.degradation)
        lr = schedule(state.step)
        t_fea = _teacher_features(teacher, frozen, lr_img, hr)

        def sr_loss(p):
            _, l1, kd = _student_l1_kd(model, p, lr_img, hr, t_fea, temperature)
            return l1 + kd_weight * kd, {"l1": l1, "kd": kd}

        def encoder_loss(p):
            _, s_fea = model.apply({"params": p}, lr_img, method="encode")
            kd = losses.kd(t_fea, s_fea, temperature)
            return kd_weight * kd, {"l1": jnp.zeros(()), "kd": kd}

        def sr_phase(state):
            return _minimize(tx, sr_loss, state.params, state.opt_state, lr)

        def warmup_phase(state):
            return _minimize(tx, encoder_loss, state.params, state.opt_state, lr)

        if warmup_steps > 0:
            params, opt, loss, aux = jax.lax.cond(
                state.step < warmup_steps, warmup_phase, sr_phase, state)
        else:
            params, opt, loss, aux = sr_phase(state)
        return (state.replace(step=state.step + 1, params=params, opt_state=opt),
                {"loss": loss, "lr": lr, **aux})

    return step


# ----------------------------------------------------------------- GAN stages --

def _next_gan_state(state: TrainState, params, opt_state, pools, ema_decay: float):
    """The GAN stages' state after an update: step + 1, new pools, EMA of G."""
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, pool=pools,
                         ema_params=ema_update(state.ema_params, params, ema_decay))


def make_gan_teacher_step(config: ml_collections.ConfigDict, model) -> StepFn:
    """KDSRNet_T: L1(KDSR_T(lq, gt), gt), EMA of the weights."""
    schedule = schedules.from_config(config.schedule)
    tx = adam(config.optimizer)

    def step(state: TrainState, batch, frozen):
        del frozen
        pools, gt, lq = _gan_batch(state, batch, config.degradation)
        lr = schedule(state.step)

        def loss_fn(p):
            l1 = losses.l1(model.apply({"params": p}, lq, gt), gt)
            return l1, {"l1": l1}

        params, opt, loss, aux = _minimize(tx, loss_fn, state.params, state.opt_state, lr)
        return (_next_gan_state(state, params, opt, pools, config.ema_decay),
                {"loss": loss, "lr": lr, **aux})

    return step


def make_gan_student_step(config: ml_collections.ConfigDict, model, teacher) -> StepFn:
    """KDSRNet_S: L1 + KD against the frozen KDSRNet_T, EMA of the weights."""
    schedule = schedules.from_config(config.schedule)
    tx = adam(config.optimizer)
    temperature, kd_weight = config.kd.temperature, config.kd.weight

    def step(state: TrainState, batch, frozen):
        pools, gt, lq = _gan_batch(state, batch, config.degradation)
        lr = schedule(state.step)
        t_fea = _teacher_features(teacher, frozen, lq, gt)

        def loss_fn(p):
            _, l1, kd = _student_l1_kd(model, p, lq, gt, t_fea, temperature)
            return l1 + kd_weight * kd, {"l1": l1, "kd": kd}

        params, opt, loss, aux = _minimize(tx, loss_fn, state.params, state.opt_state, lr)
        return (_next_gan_state(state, params, opt, pools, config.ema_decay),
                {"loss": loss, "lr": lr, **aux})

    return step


def make_kdsrgan_step(config: ml_collections.ConfigDict, model, teacher,
                      discriminator) -> StepFn:
    """KDSRGAN_S: G step (L1 + KD + perceptual + GAN, D frozen), D step, EMA."""
    schedule = schedules.from_config(config.schedule)
    tx = adam(config.optimizer)
    temperature, kd_weight = config.kd.temperature, config.kd.weight
    layer_weights = dict(config.perceptual.layer_weights)
    vgg_net = vgg_lib.VGG19Features(layers=tuple(layer_weights))
    perceptual_weight, gan_weight = config.perceptual.weight, config.gan_weight
    usm_teacher, d_lr = config.usm_teacher_gt, config.d_lr

    def step(state: TrainState, batch, frozen):
        pools, gt, lq = _gan_batch(state, batch, config.degradation)
        lr = schedule(state.step)
        # V2: the teacher's HR input is the USM-sharpened GT (`l1_gt` of the yml flags).
        t_fea = _teacher_features(teacher, frozen, lq, sharpen.usm(gt) if usm_teacher else gt)

        def g_loss(p):
            sr, l1, kd = _student_l1_kd(model, p, lq, gt, t_fea, temperature)
            if perceptual_weight:
                features = lambda x: vgg_net.apply({"params": frozen["vgg"]}, x)  # noqa: E731
                percep = losses.perceptual(features, sr, gt, layer_weights)
            else:       # --config.perceptual.weight=0: no VGG19 at all
                percep = jnp.zeros((), jnp.float32)
            # D frozen (no D gradient); its spectral-norm power iteration still runs.
            logits, d_vars = discriminator.apply(
                {"params": jax.lax.stop_gradient(state.d_params),
                 "spectral": state.d_spectral}, sr, train=True, mutable=["spectral"])
            g_gan = losses.bce_with_logits(logits, True)
            total = l1 + kd_weight * kd + perceptual_weight * percep + gan_weight * g_gan
            return total, {"l1": l1, "kd": kd, "perceptual": percep, "g_gan": g_gan,
                           "_sr": sr, "_spectral": d_vars["spectral"]}

        params, opt, loss, aux = _minimize(tx, g_loss, state.params, state.opt_state, lr)
        sr, spectral = jax.lax.stop_gradient(aux.pop("_sr")), aux.pop("_spectral")

        def d_loss(dp):
            real, v1 = discriminator.apply({"params": dp, "spectral": spectral}, gt,
                                           train=True, mutable=["spectral"])
            fake, v2 = discriminator.apply({"params": dp, "spectral": v1["spectral"]}, sr,
                                           train=True, mutable=["spectral"])
            l_real = losses.bce_with_logits(real, True)
            l_fake = losses.bce_with_logits(fake, False)
            return l_real + l_fake, {"d_real": l_real, "d_fake": l_fake,
                                     "_spectral": v2["spectral"]}

        d_params, d_opt, d_loss_value, d_aux = _minimize(
            tx, d_loss, state.d_params, state.d_opt_state, d_lr)
        d_spectral = d_aux.pop("_spectral")
        d_aux.pop("grad_norm")
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt, pool=pools,
            ema_params=ema_update(state.ema_params, params, config.ema_decay),
            d_params=d_params, d_spectral=d_spectral, d_opt_state=d_opt)
        return new_state, {"loss": loss, "lr": lr, **aux, **d_aux, "d_loss": d_loss_value}

    return step


def make_step(config: ml_collections.ConfigDict, model, teacher=None,
              discriminator=None) -> StepFn:
    """The step of `config.stage` (see the module docstring)."""
    stage = config.stage
    if stage == "teacher":
        return make_teacher_step(config, model)
    if stage == "student":
        return make_student_step(config, model, teacher)
    if stage == "gan_teacher":
        return make_gan_teacher_step(config, model)
    if stage == "gan_student":
        return make_gan_student_step(config, model, teacher)
    if stage == "gan":
        return make_kdsrgan_step(config, model, teacher, discriminator)
    raise ValueError(f"unknown stage {stage!r}")
