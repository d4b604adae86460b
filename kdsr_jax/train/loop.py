"""The training loop: `train_and_evaluate(config, workdir)` for every KDSR stage.

Sections: model spec -> mesh -> frozen networks (teacher, VGG19) -> train state (fresh or
restored) -> data iterator -> jitted step -> loop with logging, evaluation, checkpoints.

Workdir layout:
  model.json          ModelSpec of the trained SR model (for `kdsr_jax.checkpoints.load`)
  config.json         the full config of the run
  checkpoints/<step>/ orbax: train state (params, Adam, EMA, discriminator, pool, rng,
                      step) + the host data-iterator state
  tb/                 TensorBoard events (losses, lr, steps/s, perf/input_wait_s and
                      perf/input_wait_fraction, eval PSNR/SSIM, images)

Checkpoints are written every `checkpoint_every_steps`, at the end, and when SIGTERM
or SIGINT arrives (the current step finishes, the state is saved, the run exits
cleanly). Running the same command again on the same workdir resumes exactly: the
state, RNG and data position are restored. A non-finite loss stops the run with
`NonFiniteLossError` before anything is saved, so the last good checkpoint stays.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from kdsr_jax import models
from kdsr_jax.data import input_wait
from kdsr_jax.models.spec import ModelSpec
from kdsr_jax.train import evaluation, sharding, state as state_lib, steps

logger = logging.getLogger(__name__)

TEACHER_STAGES = ("teacher", "gan_teacher")
GAN_STAGES = ("gan_teacher", "gan_student", "gan")
STAGES = ("teacher", "student") + GAN_STAGES
CHECKPOINT_DIR = "checkpoints"
MODEL_JSON = "model.json"
CONFIG_JSON = "config.json"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; training stopped without saving."""


def model_spec(config) -> ModelSpec:
    """The SR model this stage trains (teacher or student) from `config.model`."""
    if config.stage not in STAGES:
        raise ValueError(f"unknown stage {config.stage!r}; expected one of {STAGES}")
    kind = "teacher" if config.stage in TEACHER_STAGES else "student"
    setting = "gan" if config.stage in GAN_STAGES else "classic"
    sizes = {k: config.model[k] for k in ("n_feats", "n_blocks", "n_resblocks")
             if config.model[k] > 0}
    return models.preset(config.model.preset, kind=kind, scale=config.model.scale,
                         setting=setting, dynconv=config.model.dynconv, **sizes)


def _load_frozen_teacher(config, spec: ModelSpec):
    """The frozen teacher of a student stage, checked against the student's sizes."""
    from kdsr_jax import checkpoints

    if not config.teacher:
        raise ValueError(f"stage {config.stage!r} needs a teacher: pass --config.teacher=PATH "
                         "(teacher workdir, converted dir or official .pth)")
    t_model, t_vars = checkpoints.load(config.teacher)
    t_spec = t_model.spec
    if t_spec.kind != "teacher":
        raise ValueError(f"{config.teacher} holds a {t_spec.kind}, not a teacher")
    for f in ("n_feats", "n_blocks", "scale"):
        if getattr(t_spec, f) != getattr(spec, f):
            raise ValueError(f"teacher {f}={getattr(t_spec, f)} does not match the student's "
                             f"{f}={getattr(spec, f)} (config.model.preset={config.model.preset!r})")
    return t_model, {"params": t_vars["params"]}


def _discriminator_spec(config) -> ModelSpec:
    return ModelSpec(kind="discriminator", setting="gan",
                     d_num_feat=config.discriminator.num_feat,
                     d_skip_connection=config.discriminator.skip_connection)


def build(config, spec: ModelSpec, key: jax.Array):
    """(step_fn, fresh state, frozen pytree) for `config.stage`."""
    dtype = jnp.dtype(config.model.dtype)
    model = models.build_model(spec, dtype=dtype)
    tx = state_lib.adam(config.optimizer)
    k_init, k_ema, k_d = jax.random.split(key, 3)
    params = models.init_variables(spec, k_init)["params"]
    frozen: dict[str, Any] = {}
    teacher = None
    if config.stage not in TEACHER_STAGES:
        teacher, frozen["teacher"] = _load_frozen_teacher(config, spec)
        teacher = models.build_model(teacher.spec, dtype=dtype)
        # §1.5 / §2.4: G starts as the teacher's G, the student encoder from scratch.
        params = {**params, "G": frozen["teacher"]["params"]["G"]}
    if config.stage in ("teacher", "student"):
        fresh = state_lib.create(params=params, tx=tx, seed=config.seed)
        return steps.make_classic_step(config, model, teacher), fresh, frozen

    pool = _init_pool(config)
    ema_params = None
    d_vars = None
    if config.stage == "gan_student":
        # §2.4 quirk: net_g_ema's E_st gets its own random init.
        ema_params = {**params, "E": models.init_variables(spec, k_ema)["params"]["E"]}
    if config.stage == "gan":
        from kdsr_jax import checkpoints

        if not config.student:
            raise ValueError("stage 'gan' starts from a KDSRNet_S checkpoint: pass "
                             "--config.student=PATH")
        s_model, s_vars = checkpoints.load(config.student)
        if s_model.spec.kind != "student":
            raise ValueError(f"{config.student} holds a {s_model.spec.kind}, not a student")
        params = s_vars["params"]
        d_vars = models.init_variables(_discriminator_spec(config), k_d, lr_hw=(32, 32))
        frozen["vgg"] = _load_vgg(config)
    fresh = state_lib.create(params=params, tx=tx, seed=config.seed, ema=True,
                             ema_params=ema_params, d_variables=d_vars, pool=pool)
    d_model = (models.build_model(_discriminator_spec(config), dtype=dtype)
               if config.stage == "gan" else None)
    return steps.make_gan_step(config, model, teacher, d_model), fresh, frozen


def _init_pool(config):
    """The training-pair pool (DEGRADATION.md §2.3) of `degradation.queue_size` pairs
    (global: the step runs on the global batch, see config_base.GAN_POOL_BATCHES)."""
    deg = config.degradation
    if not deg.queue_size:
        return {}
    from kdsr_jax.degradation import pool as pool_lib

    lq = deg.gt_size // deg.scale
    return pool_lib.init(deg.queue_size, (lq, lq, 3), (lq * deg.scale, lq * deg.scale, 3))


def _load_vgg(config):
    from kdsr_jax.train import vgg

    if config.perceptual.vgg_path == "random":   # smoke tests only
        return vgg.random_params(jax.random.PRNGKey(0))
    return vgg.load_torchvision_vgg19(config.perceptual.vgg_path)


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked between steps."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:      # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum, frame):
        del frame
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
                                 options=options)


def _write_json(path: str, text: str) -> None:
    if jax.process_index() != 0:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _check_finite(step: int, metrics: dict, last_saved: int | None) -> None:
    """Loss and gradient norm of `step` must be finite (else the update was not)."""
    loss, gnorm = float(metrics["loss"]), float(metrics.get("grad_norm", 0.0))
    if not (math.isfinite(loss) and math.isfinite(gnorm)):
        raise NonFiniteLossError(
            f"non-finite loss ({loss}) or gradient norm ({gnorm}) at step {step}; stopping "
            f"without saving. Last good checkpoint: "
            f"{'none' if last_saved is None else f'step {last_saved}'}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, num_devices: int | None = None, max_steps: int | None = None,
                       progress: bool = True) -> state_lib.TrainState:
    """Trains `config.stage` into `workdir` (resuming from its latest checkpoint).

    `max_steps` stops after that many steps *in this call* (saving a checkpoint), as if
    interrupted; tests use it to check exact resumption.
    """
    from kdsr_jax.data import pipeline

    os.makedirs(workdir, exist_ok=True)
    spec = model_spec(config)
    _write_json(os.path.join(workdir, MODEL_JSON), spec.to_json())
    _write_json(os.path.join(workdir, CONFIG_JSON), config.to_json_best_effort(indent=2))

    mesh = sharding.make_mesh(num_devices)
    sharding.check_batch_size(config.batch_size, mesh)
    step_fn, fresh, frozen = build(config, spec, jax.random.PRNGKey(config.seed))
    train_step = sharding.jit_step(step_fn, mesh)
    state = sharding.replicate(fresh, mesh)
    frozen = sharding.replicate(frozen, mesh)

    mgr = _checkpoint_manager(workdir, config.keep_checkpoints)
    start = mgr.latest_step()
    data_state = None
    if start is not None:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = mgr.restore(start, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        state, data_state = restored.state, restored.data
        logger.info("resumed from %s at step %d", workdir, start)
    start = int(jax.device_get(state.step))

    data_it = pipeline.create_train_iterator(
        config.data, batch_size=config.batch_size, patch_size=config.patch_size,
        augment=config.augment, seed=config.seed, start_step=start)
    if data_state and jax.process_count() == 1:
        data_it.set_state(data_state)

    def save(step: int, st) -> None:
        mgr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(st), data=ocp.args.JsonSave(data_it.get_state())),
            force=True)
        mgr.wait_until_finished()

    pairs = evaluation.make_pairs(config.eval, spec.scale) if config.eval_every_steps else []
    predict = evaluation.make_predict(models.build_model(spec)) if pairs else None
    writer = _summary_writer(workdir)
    total = config.total_steps
    end = total if max_steps is None else min(total, start + max_steps)
    last_saved = start if mgr.latest_step() is not None else None
    bar = _progress_bar(start, total, progress)
    t_last, n_last = time.time(), start
    feed = input_wait.InputWaitMeter(data_it)  # perf/input_wait_* scalars, bottleneck warning
    pending = None            # (step, metrics) checked one step late: keeps the device busy
    step = start
    try:
        with _StopFlag() as stop:
            while step < end:
                batch = sharding.global_batch(next(feed), mesh)
                state, metrics = train_step(state, batch, frozen)
                if pending is not None:
                    _check_finite(*pending, last_saved)
                step += 1
                pending = (step, metrics)
                bar.update(1)
                if step % config.log_every_steps == 0 or step == end:
                    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    _check_finite(step, host, last_saved)
                    now = time.time()
                    host["steps_per_s"] = (step - n_last) / max(now - t_last, 1e-9)
                    t_last, n_last = now, step
                    bar.set_postfix(loss=f"{host['loss']:.4f}", lr=f"{host['lr']:.2e}")
                    _log_scalars(writer, step, {f"train/{k}": v for k, v in host.items()})
                    _log_scalars(writer, step, feed.scalars())
                if pairs and (step % config.eval_every_steps == 0 or step == total):
                    _evaluate(writer, step, state, predict, pairs, spec.scale, config)
                if (step % config.checkpoint_every_steps == 0 or step == end
                        or stop.signum is not None):
                    _check_finite(*pending, last_saved)
                    save(step, state)
                    last_saved = step
                if stop.signum is not None:
                    logger.warning("signal %d: saved step %d, exiting", stop.signum, step)
                    break
            if pending is not None:
                _check_finite(*pending, last_saved)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        mgr.close()
    return state


def _evaluate(writer, step, state, predict, pairs, scale, config) -> dict:
    params = state.ema_params if state.ema_params else state.params
    scores, srs = evaluation.run(predict, params, pairs, scale)
    logger.info("step %d: held-out PSNR_Y %.3f dB, SSIM_Y %.4f", step, scores["psnr_y"],
                scores["ssim_y"])
    _log_scalars(writer, step, {f"eval/{k}": v for k, v in scores.items()})
    if writer is not None:
        for pair, sr in list(zip(pairs, srs))[:config.eval.num_tensorboard_images]:
            writer.add_image(f"eval/{pair.name}_lr_sr_hr", evaluation.triplet(pair, sr, scale),
                             step, dataformats="HWC")
    return scores


def _summary_writer(workdir: str):
    if jax.process_index() != 0:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(os.path.join(workdir, "tb"))


def _log_scalars(writer, step: int, scalars: dict[str, float]) -> None:
    if writer is None:
        return
    for k, v in scalars.items():
        writer.add_scalar(k, v, step)
    writer.flush()


def _progress_bar(start: int, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                disable=not enabled or jax.process_index() != 0, smoothing=0.1)
