"""The training loop: `train_and_evaluate(config, workdir)` for every KDSR stage.

Sections: model spec -> mesh -> frozen networks (teacher, VGG19) -> train state (fresh or
restored) -> data iterator -> jitted step -> loop with logging, evaluation, checkpoints.

Workdir layout:
  model.json          ModelSpec of the trained SR model (for `kdsr_jax.checkpoints.load`)
  config.json         the full config of the run
  checkpoints/<step>/ orbax: train state (params, Adam, EMA, discriminator, pool, rng,
                      step) + the data position (step and what defines the batches)
  tb/                 TensorBoard events (losses, lr, steps/s, perf/input_wait_s and
                      perf/input_wait_fraction, eval PSNR/SSIM, images)
  .lock               held while a run trains (kdsr_jax.train.workdir)
  checkpoints_damaged/  damaged steps moved aside on resume (kdsr_jax.orbax_steps)

Checkpoints are written every `checkpoint_every_steps`, at the end, and when SIGTERM
or SIGINT arrives. Running the same command again on the same workdir resumes exactly:
the state and RNG are restored and the data continue from the saved step (every batch
is determined by its step, so the process count, worker threads and worker processes
may differ between the runs). A non-finite loss, or non-finite updated parameters
(checked before every save), stop the run with `NonFiniteLossError` before anything is
saved, so every checkpoint holds finite weights. Before anything is written the config
is validated and the workdir checked and locked (kdsr_jax.train.workdir).

Several processes (`sharding.maybe_initialize_distributed`): every process runs this
same loop on its rows of the global batch. Stopping is agreed inside the step: each
process votes with its signal flag and the step all-reduces the votes
(`sharding.jit_step`), so a SIGTERM reaching one process, or the processes at
different steps, stops all of them after the same step; they all save it and return.
A non-finite loss is the same value on every process, so every process stops at the
same step with `NonFiniteLossError`, before anything is saved (the last good
checkpoint stays). A peer that dies makes the next collective fail on the others:
they stop with `PeerLostError` (one line naming the last good checkpoint); a peer
that hangs is declared dead by the JAX coordination service after its heartbeat
timeout (`scripts/train.py --heartbeat_timeout_s`, default 100 s), which ends the
others.
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
from tensorboardX import SummaryWriter
from tqdm import tqdm

from kdsr_jax import checkpoints, models, orbax_steps
from kdsr_jax.degradation import pool as pool_lib
from kdsr_jax.data import input_wait, pipeline
from kdsr_jax.checkpoints import CHECKPOINT_DIR, CONFIG_JSON  # noqa: F401 (workdir layout)
from kdsr_jax.models.spec import MODEL_JSON, ModelSpec  # noqa: F401
from kdsr_jax.train import (config_base, evaluation, sharding, state as state_lib, steps,
                            validate, vgg)
from kdsr_jax.train import workdir as workdir_lib

logger = logging.getLogger(__name__)

TEACHER_STAGES = ("teacher", "gan_teacher")
GAN_STAGES = ("gan_teacher", "gan_student", "gan")
STAGES = ("teacher", "student") + GAN_STAGES


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; training stopped without saving."""


class PeerLostError(RuntimeError):
    """Another process of a multi-process run died or became unreachable (one line)."""


class StepMemoryError(ValueError):
    """The training step does not fit in device memory (one line with the remedies)."""


# Substrings of runtime errors raised when a peer process is gone (gloo on CPU, NCCL
# on GPU, the JAX coordination service / orbax barriers everywhere).
_PEER_LOST_MARKERS = ("Gloo", "Connection closed by peer", "Connection reset by peer",
                      "NCCL", "heartbeat", "coordination service", "UNAVAILABLE",
                      "DEADLINE_EXCEEDED", "Barrier", "barrier")
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


def model_spec(config) -> ModelSpec:
    """The SR model this stage trains (teacher or student) from `config.model`.

    Checks the whole config first (`config_base.validate`): a contradiction or a field
    that would not act stops here, in one line, before anything compiles."""
    if config.stage not in STAGES:
        raise ValueError(f"unknown stage {config.stage!r}; expected one of {STAGES}")
    config_base.validate(config)
    kind = "teacher" if config.stage in TEACHER_STAGES else "student"
    setting = "gan" if config.stage in GAN_STAGES else "classic"
    sizes = {k: config.model[k] for k in ("n_feats", "n_blocks", "n_resblocks")
             if config.model[k] > 0}
    return models.preset(config.model.preset, kind=kind, scale=config.model.scale,
                         setting=setting, dynconv=config.model.dynconv, **sizes)


def _load_frozen_teacher(config, spec: ModelSpec):
    """The frozen teacher of a student stage, checked against the student's sizes."""

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
    model = models.build_model(spec, dtype=dtype, remat=config.model.remat)
    tx = state_lib.adam(config.optimizer)
    k_init, k_ema, k_d = jax.random.split(key, 3)
    params = models.init_variables(spec, k_init)["params"]
    frozen: dict[str, Any] = {}
    teacher = None
    if config.stage not in TEACHER_STAGES:
        teacher, frozen["teacher"] = _load_frozen_teacher(config, spec)
        teacher = models.build_model(teacher.spec, dtype=dtype)
        # Student stages: G starts as the teacher's G, the student's KD-IDE from scratch.
        params = {**params, "G": frozen["teacher"]["params"]["G"]}
    if config.stage in ("teacher", "student"):
        fresh = state_lib.create(params=params, tx=tx, seed=config.seed)
        return steps.make_step(config, model, teacher), fresh, frozen

    ema_params = None
    d_vars = None
    d_model = None
    if config.stage == "gan_student":
        # KDSRNet_S quirk: net_g_ema is loaded separately, so its E_st has its own init.
        ema_params = {**params, "E": models.init_variables(spec, k_ema)["params"]["E"]}
    if config.stage == "gan":
        if not config.student:
            raise ValueError("stage 'gan' starts from a KDSRNet_S checkpoint: pass "
                             "--config.student=PATH")
        s_model, s_vars = checkpoints.load(config.student)
        if s_model.spec.kind != "student":
            raise ValueError(f"{config.student} holds a {s_model.spec.kind}, not a student")
        params = s_vars["params"]
        d_vars = models.init_variables(_discriminator_spec(config), k_d, lr_hw=(32, 32))
        d_model = models.build_model(_discriminator_spec(config), dtype=dtype)
        if config.perceptual.weight:     # an unused perceptual loss needs no VGG19 file
            frozen["vgg"] = _load_vgg(config)
    fresh = state_lib.create(params=params, tx=tx, seed=config.seed, ema=True,
                             ema_params=ema_params, d_variables=d_vars,
                             pool=_init_pool(config))
    return steps.make_step(config, model, teacher, d_model), fresh, frozen


def _init_pool(config):
    """One training-pair pool of `degradation.queue_size` pairs per group of
    `degradation.group_size` images of the global batch (the official runs keep one
    180-pair pool per process of 9 images); {} when queue_size is 0."""
    deg = config.degradation
    if not deg.queue_size:
        return {}
    lq = deg.gt_size // deg.scale
    return pool_lib.init(deg.queue_size, (lq, lq, 3), (lq * deg.scale, lq * deg.scale, 3),
                         groups=config.batch_size // deg.group_size)


def _load_vgg(config):
    if config.perceptual.vgg_path == "random":   # tests only: not a perceptual loss
        logger.warning("--config.perceptual.vgg_path=random: random VGG19 weights, for "
                       "tests only; the perceptual loss is meaningless")
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
    return orbax_steps.open_manager(lambda: ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)), options=options))


def _restore_newest(mgr: ocp.CheckpointManager, workdir: str, abstract):
    """(step, restored) of the newest readable checkpoint, or (None, None). Damaged
    newer steps (named in one warning) are moved to `<workdir>/checkpoints_damaged/`,
    so the run continues from the readable step and can save those steps again."""
    root = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    step, restored, damaged = orbax_steps.restore_newest_readable(
        mgr.all_steps(), lambda s: os.path.join(root, str(s)),
        lambda s: mgr.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())),
        workdir, items=("state",))
    if damaged and jax.process_index() == 0:
        aside = os.path.join(workdir, workdir_lib.DAMAGED_DIR)
        os.makedirs(aside, exist_ok=True)
        for s, _ in damaged:
            os.replace(os.path.join(root, str(s)),
                       os.path.join(aside, f"{s}-{time.strftime('%Y%m%d-%H%M%S')}"))
        mgr.reload()
    return step, restored


def _check_state_finite(step: int, st, last_saved: int | None) -> None:
    """Never save NaN/inf weights: the updated parameters (and EMA, discriminator,
    optimizer moments) of `step` must be finite."""
    bad = validate.nonfinite_leaves({"params": st.params, "ema_params": st.ema_params,
                                     "d_params": st.d_params, "opt_state": st.opt_state})
    if bad:
        raise NonFiniteLossError(
            f"non-finite parameters after step {step} ({', '.join(bad)}); stopping without "
            f"saving. Last good checkpoint: "
            f"{'none' if last_saved is None else f'step {last_saved}'}")


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
    """Trains `config.stage` into `workdir` (resuming from its newest readable checkpoint).

    `max_steps` stops after that many steps *in this call* (saving a checkpoint), as if
    interrupted; tests use it to check exact resumption. Before anything is written the
    config is validated (`validate.check_config`) and the workdir checked and locked
    (`workdir.prepare`): ValueErrors with one-line messages.
    """
    validate.check_config(config)
    spec = model_spec(config)
    with workdir_lib.prepare(config, workdir, spec):
        return _train(config, workdir, spec, num_devices=num_devices, max_steps=max_steps,
                      progress=progress)


def _train(config, workdir: str, spec: ModelSpec, *, num_devices, max_steps, progress):
    workdir_lib.write_run_files(workdir, spec, config)

    mesh = sharding.make_mesh(num_devices)
    sharding.check_batch_size(config.batch_size, mesh)
    step_fn, fresh, frozen = build(config, spec, jax.random.PRNGKey(config.seed))
    train_step = sharding.jit_step(step_fn, mesh, fresh, stop_votes=True)
    sharding.wait_for_all_processes("kdsr_jax:start")   # before the first collective
    state = sharding.place_state(fresh, mesh)
    frozen = sharding.replicate(frozen, mesh)

    mgr = _checkpoint_manager(workdir, config.keep_checkpoints)
    state, data_state = _restore(mgr, state, workdir)
    start = int(jax.device_get(state.step))

    data_it = pipeline.create_train_iterator(
        config.data, batch_size=config.batch_size, patch_size=config.patch_size,
        augment=config.augment, seed=config.seed, start_step=start,
        rows=sharding.host_batch_rows(config.batch_size, mesh))
    _check_data_state(data_it, data_state, start)

    def save(step: int, st) -> None:
        _check_state_finite(step, st, last_saved)
        with orbax_steps.contained(f"cannot save checkpoint step {step} in {workdir}"):
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
                votes = sharding.stop_votes(stop.signum is not None, mesh)
                state, metrics = train_step(state, batch, frozen, votes)
                stop_agreed = False
                if pending is not None:
                    _check_finite(*pending, last_saved)
                    stop_agreed = _stop_agreed(pending[1])
                step += 1
                pending = (step, metrics)
                bar.update(1)
                if step % config.log_every_steps == 0 or step == end:
                    host = {k: float(v) for k, v in jax.device_get(metrics).items()
                            if k != "stop"}
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
                        or stop_agreed):
                    _check_finite(*pending, last_saved)
                    save(step, state)
                    last_saved = step
                if stop_agreed:
                    logger.warning("%s: saved step %d, exiting", _stop_reason(stop.signum),
                                   step)
                    break
            if pending is not None:
                _check_finite(*pending, last_saved)
    except (RuntimeError, ValueError) as e:
        _raise_runtime_error(e, step, last_saved)
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        data_it.close()
        mgr.close()
    return state


def _restore(mgr: ocp.CheckpointManager, state, workdir: str):
    """(state, data state or None) from the newest readable checkpoint, laid out like
    `state` (whatever the process / device count that wrote it), or (state, None)
    without one."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    start, restored = _restore_newest(mgr, workdir, abstract)
    if restored is None:
        return state, None
    logger.info("resumed from %s at step %d", workdir, start)
    return restored.state, restored.data


def _check_data_state(data_it, data_state, step: int) -> None:
    """The saved data position must be this step of a pipeline making the same batches
    (loader settings and process count may differ). An older format is only logged:
    the batches are determined by the step."""
    if not data_state:
        return
    if data_state.get("version") != data_it.get_state()["version"]:
        logger.warning("checkpoint holds a data-iterator state of an older format; the "
                       "batches continue from step %d", step)
        return
    saved_step = data_it.check_state(data_state)   # ValueError for another pipeline
    if saved_step != step:
        raise ValueError(f"checkpoint's data position (step {saved_step}) does not match "
                         f"its train state (step {step})")


def _stop_agreed(metrics) -> bool:
    """Whether any process asked to stop in the step of `metrics` (the same on all)."""
    return bool(jax.device_get(metrics["stop"]))


def _stop_reason(signum) -> str:
    if signum is None:
        return "another process received a stop signal"
    return f"signal {signal.Signals(signum).name}"


def _raise_runtime_error(e: Exception, step: int, last_saved: int | None) -> None:
    """Re-raises a device/runtime error as a one-line error when it is a lost peer or
    an out-of-memory step; returns for anything else (the caller re-raises it)."""
    if isinstance(e, (NonFiniteLossError, PeerLostError, StepMemoryError)):
        return
    text = str(e)
    first = text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__
    last = "none" if last_saved is None else f"step {last_saved}"
    if any(m in text for m in _OOM_MARKERS):
        raise StepMemoryError(
            f"the training step does not fit in device memory ({first}); use more "
            "devices (the global batch is split over them), --config.model.remat=True, or a "
            "smaller --config.batch_size") from None
    if jax.process_count() > 1 and any(m in text for m in _PEER_LOST_MARKERS):
        raise PeerLostError(
            f"process {jax.process_index()} lost contact with another process of the run "
            f"near step {step} ({first}); last good checkpoint: {last}; restart all "
            "processes to resume") from None


def _evaluate(writer, step, state, predict, pairs, scale, config) -> dict:
    params = state.ema_params if state.ema_params else state.params
    scores, srs = evaluation.run(predict, params, pairs, scale)
    logger.info("step %d: held-out PSNR_Y %.3f dB, SSIM_Y %.4f", step, scores["psnr_y"],
                scores["ssim_y"])
    _log_scalars(writer, step, {f"eval/{k}": v for k, v in scores.items()})
    if writer is not None:
        for pair, sr in list(zip(pairs, srs))[:config.eval.num_tensorboard_images]:
            tag = pair.name.replace(" ", "_")
            writer.add_image(f"eval/{tag}_lr_sr_hr", evaluation.triplet(pair, sr, scale),
                             step, dataformats="HWC")
    return scores


def _summary_writer(workdir: str):
    if jax.process_index() != 0:
        return None
    return SummaryWriter(os.path.join(workdir, "tb"))


def _log_scalars(writer, step: int, scalars: dict[str, float]) -> None:
    if writer is None:
        return
    for k, v in scalars.items():
        writer.add_scalar(k, v, step)
    writer.flush()


def _progress_bar(start: int, total: int, enabled: bool):
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                disable=not enabled or jax.process_index() != 0, smoothing=0.1)
