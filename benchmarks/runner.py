"""The benchmark: model forward (JAX vs a PyTorch twin), train steps, degradation
pipelines. `run(cfg)` returns a report dict; `format_table(report)` renders it.

Sections (`BenchConfig.sections`):

* ``forward``: each student preset at `lr_size` x `batch`, per dtype (float32,
  optionally bfloat16 compute), run as users run inference,
  `kdsr_jax.inference.super_resolve` (which picks the formulation for the backend;
  `jax_paths` can add the plain `model.apply` for comparison): jit compile time apart,
  then the median latency of `iters` block_until_ready'd calls after `warmup`, and
  images/s. When torch is
  importable, the PyTorch twin (`torch_twin.py`) is loaded with the same weights, its
  output compared (max abs diff) and timed the same way, its runs interleaved with the
  JAX ones (one of each in turn, so drifting machine load hits both alike); the
  JAX/PyTorch ratios of the median and of the minimum latency are reported, per dtype
  (the twin's bfloat16 is torch autocast). The twin runs on CUDA when JAX runs on a GPU
  and torch has CUDA, else on the CPU.
* ``train``: ('model' in `train_steps`) a self-contained KDSR teacher step (L1 + Adam as
  the official classic `trainer.py`) on ready-made (LR, HR) batches: `train_batch` x
  `train_lr_size`^2 LR patches, steps/s; ('project') the project's own stage-3 step
  `kdsr_jax.train.steps.make_teacher_step` (LR synthesis inside the step) at the same
  size, reported as skipped while it or the classic degradation is unavailable.
  `train_remat` ('off', 'on', 'both') times the 'model' step with activation
  rematerialisation as well.
* ``pipelines``: `degradation.classic.degrade` (batch of `classic_hr_size`^2 HR) and
  `degradation.realesrgan.degrade` (batch of `realesrgan_gt_size`^2 GT), images/s and
  compile time; with `step_ratio=True` (opt-in: `--step-ratio`), each also as a % of
  the official-size model step it feeds at the same batch (classic -> KDSRs-M teacher
  step, Real-ESRGAN -> KDSR-GAN student step with L1 + KD), which on a CPU takes over
  15 minutes and about 20 GB of memory. `pipelines` selects which of the two run.
* ``memory`` (not in the default sections): XLA's compiled memory analysis of the
  classic teacher step at `memory_batch` x `memory_hr_size`^2 (official: 64 x 256^2,
  KDSRs-M) without and with activation rematerialisation (`build_model(remat=True)`);
  lower + compile only, nothing is allocated or run.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import platform
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import timing
from kdsr_jax import inference
from kdsr_jax.models import build_model, init_variables
from kdsr_jax.degradation import classic, realesrgan
from kdsr_jax.models.spec import preset
from kdsr_jax.train import losses, state as train_state, steps as train_steps

SECTIONS = ("forward", "train", "pipelines", "memory")
DEFAULT_SECTIONS = ("forward", "train", "pipelines")
REMAT_CHOICES = {"off": (False,), "on": (True,), "both": (False, True)}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
JAX_PATHS = ("super_resolve", "apply")

# Official classic `option.py` / `trainer.py`: Adam(betas=(0.9, 0.999), eps=1e-8), lr 1e-4.
CLASSIC_ADAM = dict(b1=0.9, b2=0.999, eps=1e-8)
CLASSIC_LR = 1e-4
# Official KDSR-GAN `options/*.yml`: Adam betas (0.9, 0.99); student lr 2e-4.
GAN_ADAM = dict(b1=0.9, b2=0.99, eps=1e-8)
GAN_STUDENT_LR = 2e-4
# Official KD loss temperature (`trainer.py` / yml `temperature`).
KD_TEMPERATURE = 0.15


@dataclasses.dataclass
class BenchConfig:
    sections: tuple[str, ...] = DEFAULT_SECTIONS
    models: tuple[str, ...] = ("KDSRs-M", "KDSRs-L", "KDSR-GAN")
    lr_size: tuple[int, int] = (64, 64)
    batch: int = 1
    scale: int = 4
    dtypes: tuple[str, ...] = ("float32",)
    jax_paths: tuple[str, ...] = ("super_resolve",)
    dynconv: str = "auto"
    torch: str = "auto"              # 'auto' (if importable) | 'on' (required) | 'off'
    warmup: int = timing.DEFAULT_WARMUP
    iters: int = timing.DEFAULT_ITERS
    train_model: str = "KDSRs-M"
    train_batch: int = 4
    train_lr_size: int = 48
    train_steps: tuple[str, ...] = ("model", "project")
    train_remat: str = "off"
    memory_model: str = "KDSRs-M"
    memory_batch: int = 64
    memory_hr_size: int = 256
    pipelines: tuple[str, ...] = ("classic", "realesrgan")
    pipeline_batch: int = 16
    classic_hr_size: int = 256
    realesrgan_gt_size: int = 400
    pipeline_teacher: str = "KDSRs-M"
    pipeline_student: str = "KDSR-GAN"
    step_ratio: bool = False
    seed: int = 0
    threads_note: str = "threads: not limited"

    def validate(self) -> None:
        bad = sorted(set(self.sections) - set(SECTIONS))
        if bad:
            raise ValueError(f"unknown section(s) {bad}; choose from {list(SECTIONS)}")
        bad = sorted(set(self.train_steps) - {"model", "project"})
        if bad:
            raise ValueError(f"unknown train step(s) {bad}; choose from ['model', 'project']")
        bad = sorted(set(self.pipelines) - {"classic", "realesrgan"})
        if bad:
            raise ValueError(f"unknown pipeline(s) {bad}; choose from ['classic', 'realesrgan']")
        bad = sorted(set(self.dtypes) - set(DTYPES))
        if bad:
            raise ValueError(f"unknown dtype(s) {bad}; choose from {list(DTYPES)}")
        bad = sorted(set(self.jax_paths) - set(JAX_PATHS))
        if bad or not self.jax_paths:
            raise ValueError(f"jax paths must be some of {list(JAX_PATHS)}, got "
                             f"{list(self.jax_paths)}")
        if self.train_remat not in REMAT_CHOICES:
            raise ValueError(f"train remat must be one of {list(REMAT_CHOICES)}, got "
                             f"{self.train_remat!r}")
        if self.memory_hr_size % self.scale:
            raise ValueError(f"memory_hr_size {self.memory_hr_size} must be a multiple of "
                             f"the scale {self.scale}")
        if self.torch not in ("auto", "on", "off"):
            raise ValueError(f"torch must be auto, on or off, got {self.torch!r}")
        for name in ("batch", "train_batch", "train_lr_size", "pipeline_batch", "iters",
                     "classic_hr_size", "realesrgan_gt_size", "memory_batch", "memory_hr_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.lr_size) < 1:
            raise ValueError(f"lr_size must be positive, got {self.lr_size}")
        if self.classic_hr_size % self.scale:
            raise ValueError(f"classic_hr_size {self.classic_hr_size} must be a multiple of "
                             f"the scale {self.scale}")
        for name in set(self.models) | {self.train_model, self.pipeline_teacher,
                                        self.pipeline_student, self.memory_model}:
            preset(name)  # raises ValueError for an unknown preset


# --------------------------------------------------------------------------- rows


def _row(section, item, backend, dtype, batch, shape, t: timing.Timing | None,
         per_run: int | None = None, unit: str = "img/s", note: str = "", **extra):
    """One table row; throughput = per_run items per median run."""
    row = dict(section=section, item=item, backend=backend, dtype=dtype, batch=batch,
               shape=shape, note=note, **extra)
    if t is not None:
        n = batch if per_run is None else per_run
        row.update(t.to_dict())
        row["throughput"] = n / t.median_s
        row["throughput_unit"] = unit
    return row


def _skip(section, item, reason):
    return dict(section=section, item=item, backend="-", dtype="-", batch=None, shape="",
                note=f"skipped: {reason}", skipped=True)


def _torch_or_none(mode: str):
    if mode == "off":
        return None
    try:
        import torch  # noqa: F401

        from benchmarks import torch_twin  # imports torch: only when it is there
        return torch_twin
    except ImportError as e:
        if mode == "on":
            raise ValueError(f"--torch on, but torch cannot be imported: {e}") from None
        return None


# --------------------------------------------------------------------------- forward


def torch_device() -> str:
    """Where the PyTorch twin runs: CUDA when JAX itself runs on a GPU and torch sees
    one (a like-for-like comparison), else the CPU."""
    import torch  # optional dependency: imported only when the twin runs

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def _twin_call(twin, x_t, device: str, dname: str):
    """A no-argument twin forward in `dname` (bfloat16 = torch autocast, the usual mixed
    precision in PyTorch) that returns only once the device has finished."""
    import torch  # optional dependency: imported only when the twin runs

    def call():
        with torch.inference_mode(), torch.autocast(
                device_type=device, dtype=torch.bfloat16, enabled=dname == "bfloat16"):
            out = twin(x_t)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return call


def bench_forward(cfg: BenchConfig, key) -> tuple[list, list]:
    rows, comparisons = [], []
    twin_mod = _torch_or_none(cfg.torch)
    h, w = cfg.lr_size
    shape = f"{h}x{w}->{h * cfg.scale}x{w * cfg.scale}"
    for name in cfg.models:
        spec = preset(name, kind="student", scale=cfg.scale, dynconv=cfg.dynconv)
        k_init, k_x, key = jax.random.split(key, 3)
        variables = init_variables(spec, k_init)
        lr = jax.random.uniform(k_x, (cfg.batch, h, w, 3), jnp.float32)
        calls, compile_s, how = {}, {}, {}
        for dname in cfg.dtypes:
            model = build_model(spec, DTYPES[dname])
            for path in cfg.jax_paths:
                fn = (functools.partial(inference.super_resolve, model) if path == "super_resolve"
                      else model.apply)
                calls[(path, dname)], compile_s[(path, dname)] = timing.compile_jax(
                    fn, variables, lr)
            how[dname] = inference.formulation(model, lr)
        if twin_mod is not None:
            import torch  # optional dependency: imported only when the twin runs

            device = torch_device()
            twin = twin_mod.twin_from_variables(spec, variables).to(device)
            x_t = twin_mod.nhwc_to_nchw(lr).to(device)
            for dname in cfg.dtypes:
                calls[("torch", dname)] = _twin_call(twin, x_t, device, dname)
        # JAX and torch runs alternate, so both see the same machine conditions.
        timed = timing.time_interleaved(calls, warmup=cfg.warmup, iters=cfg.iters)
        main = cfg.jax_paths[0]
        ref = np.asarray(timed[(main, "float32")][1]) if "float32" in cfg.dtypes else None

        def vs_reference(out, label):
            if ref is None:
                return "", None
            diff = float(np.max(np.abs(np.asarray(out, np.float32) - ref)))
            return f"max|{label} - jax {main} float32| = {diff:.2e}", diff

        for dname in cfg.dtypes:
            for path in cfg.jax_paths:
                t, out = timed[(path, dname)]
                t.compile_s = compile_s[(path, dname)]
                label = (f"super_resolve ({how[dname]})" if path == "super_resolve"
                         else "model.apply (plain)")
                diff, diff_value = ("", None) if (path, dname) == (main, "float32") else (
                    vs_reference(out, f"{path} {dname}"))
                rows.append(_row("forward", f"{name} student", "jax", dname, cfg.batch, shape,
                                 t, note="; ".join(x for x in (label, diff) if x),
                                 jax_path=path, max_abs_diff=diff_value))
        if twin_mod is None:
            continue
        for dname in cfg.dtypes:
            t, out_t = timed[("torch", dname)]
            note, diff = vs_reference(twin_mod.nchw_to_nhwc(out_t), f"torch {dname}")
            note = (f"torch {torch.__version__} on {device}"
                    + (f", {torch.get_num_threads()} threads" if device == "cpu" else "")
                    + (f"; {note}" if note else ""))
            rows.append(_row("forward", f"{name} student", "torch", dname, cfg.batch, shape, t,
                             note=note, max_abs_diff=diff))
            jax_t = timed[(main, dname)][0]
            comparisons.append(dict(
                what=f"{name} student forward {shape} batch {cfg.batch} {dname}", jax_path=main,
                jax_median_s=jax_t.median_s, torch_median_s=t.median_s,
                jax_over_torch=jax_t.median_s / t.median_s,
                jax_min_s=jax_t.min_s, torch_min_s=t.min_s,
                jax_over_torch_min=jax_t.min_s / t.min_s, max_abs_diff=diff))
    return rows, comparisons


# --------------------------------------------------------------------------- train steps


def make_sr_step(spec, lr_rate: float, adam: dict, teacher_spec=None, remat: bool = False):
    """A self-contained jit-able SR train step on ready (LR, HR) batches:
    `step((params, opt_state), lr, hr[, teacher_params]) -> ((params, opt_state), loss)`.
    Teacher models: L1(model(lr, hr), hr). Students: L1 + KD against the frozen
    `teacher_spec` encoder when given, else L1. Adam via optax (torch Adam semantics).
    `remat`: `build_model(..., remat=True)` (activation rematerialisation)."""
    model = build_model(spec, remat=remat)
    tx = optax.adam(lr_rate, **adam)
    teacher = build_model(teacher_spec) if teacher_spec is not None else None

    def step(state, lr, hr, teacher_params=None):
        params, opt_state = state

        def loss_fn(p):
            if spec.kind == "teacher":
                return losses.l1(model.apply({"params": p}, lr, hr), hr)
            sr, feats = model.apply({"params": p}, lr, return_features=True)
            loss = losses.l1(sr, hr)
            if teacher is not None:
                _, t_fea = teacher.apply({"params": teacher_params}, lr, hr, method="encode")
                loss = loss + losses.kd(t_fea, feats["fea"], KD_TEMPERATURE)
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def init_state(key):
        params = init_variables(spec, key)["params"]
        return params, tx.init(params)

    return step, init_state


def _time_sr_step(spec, batch, lr_hw, key, cfg, lr_rate, adam, teacher_spec=None,
                  remat=False):
    step, init_state = make_sr_step(spec, lr_rate, adam, teacher_spec, remat=remat)
    k_p, k_lr, k_hr, k_t = jax.random.split(key, 4)
    state = init_state(k_p)
    lr = jax.random.uniform(k_lr, (batch, *lr_hw, 3), jnp.float32)
    hr = jax.random.uniform(k_hr, (batch, lr_hw[0] * spec.scale, lr_hw[1] * spec.scale, 3),
                            jnp.float32)
    args = (lr, hr)
    if teacher_spec is not None:
        args += (init_variables(teacher_spec, k_t)["params"],)
    t, loss = timing.time_jax_step(step, state, *args, warmup=cfg.warmup, iters=cfg.iters)
    if not np.isfinite(float(loss)):
        raise FloatingPointError(f"non-finite loss {float(loss)} in the benchmarked step")
    return t


def bench_train(cfg: BenchConfig, key) -> list:
    rows = []
    spec = preset(cfg.train_model, kind="teacher", scale=cfg.scale, dynconv=cfg.dynconv)
    p = cfg.train_lr_size
    shape = f"{p}x{p}->{p * cfg.scale}x{p * cfg.scale}"
    k1, k2 = jax.random.split(key)
    if "model" in cfg.train_steps:
        for remat in REMAT_CHOICES[cfg.train_remat]:
            t = _time_sr_step(spec, cfg.train_batch, (p, p), k1, cfg, CLASSIC_LR, CLASSIC_ADAM,
                              remat=remat)
            rows.append(_row("train", f"{cfg.train_model} teacher step (L1+Adam)"
                             + (" remat" if remat else ""), "jax", "float32",
                             cfg.train_batch, shape, t, per_run=1, unit="steps/s",
                             note=f"{cfg.train_batch / t.median_s:.2f} img/s; ready LR/HR batches",
                             remat=remat))
    if "project" in cfg.train_steps:
        try:
            rows.append(_bench_training_engineer_step(cfg, spec, k2, shape))
        except Exception as e:  # optional integration with code that is still evolving
            rows.append(_skip("train", f"{cfg.train_model} kdsr_jax.train classic teacher step",
                              f"{type(e).__name__}: {' '.join(str(e).split())[:150]}"))
    return rows


def _bench_training_engineer_step(cfg, spec, key, shape):
    """The project's own stage-3 step (kdsr_jax.train.steps.make_teacher_step), which
    synthesises the LR batch from uint8 HR inside the step."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "configs", "teacher.py")
    module_spec = importlib.util.spec_from_file_location("configs_teacher", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config()
    config.batch_size = cfg.train_batch
    config.patch_size = cfg.train_lr_size * cfg.scale
    config.model.preset = cfg.train_model
    model = build_model(spec)
    step = train_steps.make_teacher_step(config, model)
    state = train_state.create(params=init_variables(spec, key)["params"],
                               tx=train_state.adam(config.optimizer), seed=cfg.seed)
    hr = np.random.default_rng(cfg.seed).integers(
        0, 256, (cfg.train_batch, config.patch_size, config.patch_size, 3), dtype=np.uint8)
    t, _ = timing.time_jax_step(lambda s, b: step(s, b, {}), state, {"hr": jnp.asarray(hr)},
                                warmup=cfg.warmup, iters=cfg.iters)
    return _row("train", f"{cfg.train_model} kdsr_jax.train classic teacher step", "jax",
                "float32", cfg.train_batch, shape, t, per_run=1, unit="steps/s",
                note="incl. classic LR synthesis in the step")


# --------------------------------------------------------------------------- pipelines


def bench_pipelines(cfg: BenchConfig, key) -> tuple[list, list]:
    rows, comparisons = [], []
    b = cfg.pipeline_batch
    k_c, k_r, k_s1, k_s2 = jax.random.split(key, 4)

    if "classic" in cfg.pipelines:
        s = cfg.classic_hr_size
        hr = jnp.round(jax.random.uniform(k_c, (b, s, s, 3)) * 255) / 255
        deg_cfg = classic.default_config()
        t, lr = timing.time_jax(lambda k, x: classic.degrade(k, x, deg_cfg), k_c, hr,
                                warmup=cfg.warmup, iters=cfg.iters)
        lr_shape = tuple(lr.shape)
        rows.append(_row("pipelines", "classic degrade", "jax", "float32", b,
                         f"{s}x{s}->{lr_shape[1]}x{lr_shape[2]}", t))
        if cfg.step_ratio:
            spec = preset(cfg.pipeline_teacher, kind="teacher", scale=cfg.scale, dynconv=cfg.dynconv)
            ts = _time_sr_step(spec, b, lr_shape[1:3], k_s1, cfg, CLASSIC_LR, CLASSIC_ADAM)
            rows.append(_row("pipelines", f"{cfg.pipeline_teacher} teacher step (L1+Adam)", "jax",
                             "float32", b, f"{lr_shape[1]}x{lr_shape[2]}", ts, per_run=1,
                             unit="steps/s"))
            comparisons.append(dict(what=f"classic degrade / {cfg.pipeline_teacher} teacher "
                                         f"step, batch {b}",
                                    pipeline_median_s=t.median_s, step_median_s=ts.median_s,
                                    percent=100 * t.median_s / ts.median_s))

    if "realesrgan" in cfg.pipelines:
        g = cfg.realesrgan_gt_size
        gt = jnp.round(jax.random.uniform(k_r, (b, g, g, 3)) * 255) / 255
        deg_cfg = realesrgan.default_config()
        t, (gt_patch, lq) = timing.time_jax(lambda k, x: realesrgan.degrade(k, x, deg_cfg),
                                            k_r, gt, warmup=cfg.warmup, iters=cfg.iters)
        lq_shape = tuple(lq.shape)
        rows.append(_row("pipelines", "Real-ESRGAN degrade", "jax", "float32", b,
                         f"{g}x{g}->{lq_shape[1]}x{lq_shape[2]}", t,
                         note=f"gt patch {gt_patch.shape[1]}x{gt_patch.shape[2]}"))
        if cfg.step_ratio:
            spec = preset(cfg.pipeline_student, kind="student", scale=cfg.scale, dynconv=cfg.dynconv)
            teacher_spec = spec.replace(kind="teacher")
            ts = _time_sr_step(spec, b, lq_shape[1:3], k_s2, cfg, GAN_STUDENT_LR, GAN_ADAM,
                               teacher_spec=teacher_spec)
            rows.append(_row("pipelines", f"{cfg.pipeline_student} student step (L1+KD+Adam)",
                             "jax", "float32", b, f"{lq_shape[1]}x{lq_shape[2]}", ts, per_run=1,
                             unit="steps/s"))
            comparisons.append(dict(what=f"Real-ESRGAN degrade / {cfg.pipeline_student} student "
                                         f"step, batch {b}",
                                    pipeline_median_s=t.median_s, step_median_s=ts.median_s,
                                    percent=100 * t.median_s / ts.median_s))
    return rows, comparisons


# --------------------------------------------------------------------------- memory


def bench_memory(cfg: BenchConfig, key) -> list:
    """XLA's compiled memory analysis of the classic teacher step (`make_sr_step`, L1 +
    Adam) at `memory_batch` x `memory_hr_size`^2 HR (official: 64 x 256^2, KDSRs-M),
    without and with activation rematerialisation, and the bytes JAX saves for the
    backward pass (the residuals of `jax.vjp` of the L1 loss: what remat changes,
    before any backend compiler). Lowers and compiles only, on abstract inputs:
    nothing of that size is allocated or run."""
    rows = []
    spec = preset(cfg.memory_model, kind="teacher", scale=cfg.scale, dynconv=cfg.dynconv)
    b, hr_side = cfg.memory_batch, cfg.memory_hr_size
    lr_side = hr_side // cfg.scale
    lr = jax.ShapeDtypeStruct((b, lr_side, lr_side, 3), jnp.float32)
    hr = jax.ShapeDtypeStruct((b, hr_side, hr_side, 3), jnp.float32)
    for remat in (False, True):
        step, init_state = make_sr_step(spec, CLASSIC_LR, CLASSIC_ADAM, remat=remat)
        state = jax.eval_shape(init_state, key)
        t0 = time.perf_counter()
        compiled = jax.jit(step, donate_argnums=0).lower(state, lr, hr).compile()
        compile_s = time.perf_counter() - t0
        m = compiled.memory_analysis()
        model = build_model(spec, remat=remat)
        residuals = jax.eval_shape(lambda p, lr, hr: jax.vjp(lambda q: losses.l1(
            model.apply({"params": q}, lr, hr), hr), p)[1], state[0], lr, hr)
        saved = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(residuals))
        sizes = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0)
                 for k in ("temp", "argument", "output", "alias", "generated_code")}
        peak = sizes["temp"] + sizes["argument"] + sizes["output"] - sizes["alias"]
        gib = lambda n: n / 2 ** 30  # noqa: E731
        rows.append(dict(section="memory", item=f"{cfg.memory_model} teacher step (L1+Adam)"
                         + (" remat" if remat else ""), backend="jax", dtype="float32",
                         batch=b, shape=f"{lr_side}x{lr_side}->{hr_side}x{hr_side}",
                         compile_s=compile_s, remat=remat, peak_bytes=peak,
                         residual_bytes=saved, **{
                             f"{k}_bytes": v for k, v in sizes.items()},
                         note=f"saved for backward {gib(saved):.2f} GiB; compiled: "
                              f"temp {gib(sizes['temp']):.2f} GiB, arguments "
                              f"{gib(sizes['argument']):.2f} GiB, outputs "
                              f"{gib(sizes['output']):.2f} GiB (aliased "
                              f"{gib(sizes['alias']):.2f}) -> about {gib(peak):.2f} GiB "
                              f"on {jax.default_backend()}"))
    return rows


# --------------------------------------------------------------------------- report


def environment() -> dict[str, Any]:
    env = dict(python=platform.python_version(), jax=jax.__version__,
               backend=jax.default_backend(),
               devices=[d.device_kind for d in jax.local_devices()][:1] + (
                   [f"... {jax.local_device_count()} devices"] if jax.local_device_count() > 1 else []),
               cpu_count=os.cpu_count(),
               cpu_allowed=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
               platform=platform.platform())
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        env.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return env


def run(cfg: BenchConfig, log=print) -> dict[str, Any]:
    """Run the selected sections; returns {'config', 'environment', 'results',
    'comparisons'} (JSON-serialisable)."""
    cfg.validate()
    key = jax.random.key(cfg.seed)
    load_start = timing.cpu_load()
    rows, comparisons = [], []
    k_f, k_t, k_p, k_m = jax.random.split(key, 4)
    if "forward" in cfg.sections:
        log("benchmark: forward ...")
        r, c = bench_forward(cfg, k_f)
        rows += r
        comparisons += c
    if "train" in cfg.sections:
        log("benchmark: train step ...")
        rows += bench_train(cfg, k_t)
    if "pipelines" in cfg.sections:
        log("benchmark: pipelines ...")
        r, c = bench_pipelines(cfg, k_p)
        rows += r
        comparisons += c
    if "memory" in cfg.sections:
        log("benchmark: compiled memory of the train step (lower + compile only) ...")
        rows += bench_memory(cfg, k_m)
    env = environment()
    env.update(load_avg_1min_start=load_start, load_avg_1min_end=timing.cpu_load(),
               threads=cfg.threads_note)
    return dict(config=dataclasses.asdict(cfg), environment=env, results=rows,
                comparisons=comparisons)


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def format_table(report: dict[str, Any]) -> str:
    """A fixed-width text table of the results and comparisons."""
    head = ("section", "item", "backend", "dtype", "batch", "shape", "compile s",
            "median ms", "min ms", "throughput", "note")
    lines = []
    for r in report["results"]:
        thr = (f"{r['throughput']:.3g} {r['throughput_unit']}" if "throughput" in r else "-")
        lines.append((r["section"], r["item"], r["backend"], r["dtype"], _fmt(r["batch"], "d"),
                      r["shape"], _fmt(r.get("compile_s"), ".2f"),
                      _fmt(r.get("median_s") and 1e3 * r["median_s"], ".1f"),
                      _fmt(r.get("min_s") and 1e3 * r["min_s"], ".1f"), thr, r["note"]))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    out = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
           for row in [head, tuple("-" * w for w in widths), *lines]]
    for c in report["comparisons"]:
        if "jax_over_torch" in c:
            out.append(f"{c['what']}: JAX {1e3 * c['jax_median_s']:.1f} ms vs PyTorch "
                       f"{1e3 * c['torch_median_s']:.1f} ms -> JAX/PyTorch time ratio "
                       f"{c['jax_over_torch']:.2f} (of the minima "
                       f"{c['jax_over_torch_min']:.2f}, runs interleaved)"
                       + (f" (max abs diff {c['max_abs_diff']:.2e})"
                          if c.get("max_abs_diff") is not None else ""))
        else:
            out.append(f"{c['what']}: pipeline {1e3 * c['pipeline_median_s']:.1f} ms = "
                       f"{c['percent']:.1f}% of the step ({1e3 * c['step_median_s']:.1f} ms)")
    env = report["environment"]
    out.append(f"environment: jax {env['jax']} on {env['backend']} {env['devices']}, "
               f"{env.get('cpu_allowed')}/{env['cpu_count']} CPUs, "
               + (f"torch {env['torch']} ({env['torch_threads']} threads), " if "torch" in env else "")
               + f"{env['threads']}; load avg {_fmt(env['load_avg_1min_start'], '.2f')} -> "
               f"{_fmt(env['load_avg_1min_end'], '.2f')}")
    return "\n".join(out)


def write_json(report: dict[str, Any], path) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
