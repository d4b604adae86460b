"""What every stage's config shares, and the checks run on a config before compiling.

The stage values themselves (batch, lr formula, lengths, degradation) are written in
each `configs/<stage>.py`, like the hyperparameter tables of the paper's appendix and of
the official launch scripts / ymls. This module holds only what is truly common:

* `base_config(stage)`: the fields every stage has (model, one scale, KD, logging,
  checkpointing, validation), at their defaults;
* `parse_arg`: the `--config configs/x.py:variant,...` variants;
* `apply_demo`: the small local variant (a tiny model on the bundled photos);
* `validate(config)`: every field pair that could contradict itself, and every field
  that is set but would not act, refused in one line naming the field(s).

One scale. `config.model.scale` is the single field for the SR factor: the degradation's
`scale` and the classic HR patch side (`scale x LR patch`) are `FieldReference`s to it,
so `--config.model.scale=2` (or 3) trains x2 (x3). Setting `degradation.scale` sets the
same shared value; a config built by hand with two different values is refused by
`validate` naming both fields.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from kdsr_jax.data import sources
from kdsr_jax.degradation import classic, realesrgan

# The KD loss of the official trainers: tau 0.15 (classic `--temperature`, GAN
# `kd_opt.temperature`), weight 1, in both the classic and the GAN stages.
KD_TEMPERATURE = 0.15
KD_WEIGHT = 1.0
SCALE = 4                 # every official run is x4

STAGES = ("teacher", "student", "gan_teacher", "gan_student", "gan")
CLASSIC_STAGES = ("teacher", "student")
GAN_STAGES = ("gan_teacher", "gan_student", "gan")
VALIDATION_PROTOCOLS = ("iso", "aniso", "paired")


class ConfigError(ValueError):
    """A config that would fail (or silently do nothing) once training starts."""


def parse_arg(arg: str | None, allowed: tuple[str, ...]) -> set[str]:
    """`"L,aniso"` -> {"L", "aniso"}; unknown variant names are an error."""
    tokens = {t.strip() for t in (arg or "").split(",") if t.strip()}
    unknown = sorted(tokens - set(allowed))
    if unknown:
        raise ValueError(f"unknown config variant(s) {unknown}; allowed: {list(allowed)}")
    return tokens


def base_config(stage: str) -> ml_collections.ConfigDict:
    """Fields every stage has, at their defaults; the config files set the stage values.

    Returns the config and leaves `c.model.scale` a `FieldReference` the stage file links
    its degradation scale and patch sizes to (`scale_ref(c)`).
    """
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.seed = 0
    c.batch_size = 0           # global batch size
    c.patch_size = 0           # HR side of the patch the data pipeline crops
    c.augment = "dihedral"     # 'dihedral' (classic) | 'hflip' (GAN)
    c.total_steps = 0
    # SR model: a named preset (kdsr_jax.models.spec.PRESETS); n_feats / n_blocks /
    # n_resblocks > 0 override the preset's sizes. dtype = compute dtype. remat (ours):
    # recompute each IDR-DCRB's and KD-IDE block's activations in the backward pass
    # instead of keeping them (jax.checkpoint), to fit the official batch on a smaller
    # accelerator; same parameters and gradients (kdsr_jax.models.build_model).
    c.model = ml_collections.ConfigDict(dict(
        preset="KDSRs-M", scale=config_dict.FieldReference(SCALE), dynconv="auto",
        dtype="float32", remat=False, n_feats=0, n_blocks=0, n_resblocks=0))
    c.optimizer = ml_collections.ConfigDict(dict(b1=0.9, b2=0.999, eps=1e-8))
    c.schedule = ml_collections.ConfigDict()
    c.ema_decay = 0.0          # 0 = no EMA
    c.data = sources.default_data_config()
    # Ours: logging / checkpointing / validation cadence.
    c.log_every_steps = 100
    c.checkpoint_every_steps = 5000
    c.keep_checkpoints = 3
    c.eval_every_steps = 1000
    c.eval = validation_config()
    return c


def kd_config() -> ml_collections.ConfigDict:
    """The KD loss of the student stages (the paper's KD loss): KL with temperature tau, weight."""
    return ml_collections.ConfigDict(dict(temperature=KD_TEMPERATURE, weight=KD_WEIGHT))


def scale_ref(c: ml_collections.ConfigDict) -> config_dict.FieldReference:
    """The shared reference behind `c.model.scale` (link other scale-dependent fields)."""
    return c.model.get_ref("scale")


def validation_config() -> ml_collections.ConfigDict:
    """Periodic validation during training (`kdsr_jax.train.evaluation`).

    protocol 'iso': mean over the Gaussian8 sigmas of the scale (as the official classic
    trainers validate: Set14 averaged over sigma 1.8..3.2 at x4); 'aniso': the one
    kernel below with noise; 'paired': `lr_folder` / `gt_folder` as given (GAN stages,
    BasicSR PSNR/SSIM-Y crop 4). `folder`: an HR image folder (e.g. Set14/HR); empty =
    ours, the bundled held-out photos (no download needed), centre-cropped to `max_side`
    (0 = whole image) to keep validation short.
    """
    return ml_collections.ConfigDict(dict(
        protocol="iso",
        folder="",
        lr_folder="",
        gt_folder="",
        num_images=4,          # first N images (0 = all)
        max_side=256,
        lambda_1=4.0, lambda_2=1.5, theta=120.0, noise=10.0,   # protocol 'aniso'
        num_tensorboard_images=2))


def apply_demo(c: ml_collections.ConfigDict) -> None:
    """Ours: a tiny model on the bundled photos that trains in minutes on a laptop CPU."""
    c.model.preset = "tiny"
    c.data.source = "bundled"
    c.data.split = "train"
    c.data.first = 0
    c.data.last = 0
    c.batch_size = 8
    c.total_steps = 600
    c.log_every_steps = 25
    c.checkpoint_every_steps = 200
    c.eval_every_steps = 300
    c.eval.num_images = 2
    c.eval.max_side = 128


# The classic part (both stages): DF2K and util2's degradation ------------------------

CLASSIC_STEPS_PER_EPOCH = 971   # 3450 DF2K images x repeat 18 / batch 64 (drop_last=False)
CLASSIC_LR_PATCH = 64           # --patch_size 64 (LR side); HR side = scale x 64
DF2K_RANGE = (1, 3450)          # --data_range 1-3450 of the sorted DF2K HR names


def classic_data_and_degradation(c: ml_collections.ConfigDict, aniso: bool) -> None:
    """DF2K images 1..3450 (sorted names), random HR crop, and util2.SRMDPreprocessing:
    one random kernel (+ noise level) per batch. Shared by the classic teacher and student."""
    c.data.source = "folder"
    c.data.crop = "random"
    c.data.first, c.data.last = DF2K_RANGE
    c.degradation = ml_collections.ConfigDict(dict(
        scale=scale_ref(c), blur="aniso" if aniso else "iso",
        noise=25.0 if aniso else 0.0,            # --noise 25 (aniso scripts), 0-255 units
        random=True, per_sample=False,
        sig_min=classic.SIG_MIN, sig_max=classic.SIG_MAX,              # iso: U[0.2, 4.0)
        lambda_min=classic.LAMBDA_MIN, lambda_max=classic.LAMBDA_MAX,  # aniso: U[0.2, 4.0)
        kernel_size=classic.KERNEL_SIZE))
    if aniso:   # the aniso scripts validate with lambda 4.0/1.5, theta 120, noise 10
        c.eval.protocol = "aniso"


# Ours: the classic demo (`make demo`), a small version of the same recipe (same losses,
# same two stages, the same iso blur U[0.2, 4.0) drawn per batch, Adam with step decay):
# 16 features, 10 IDR-DCRBs, 3 KD-IDE ResBlocks. At 16 features the x4 upsampler and
# KD-IDE's widening convs cost most of a step, so 10 blocks cost little more than the
# test preset's 3 and give G the depth deblurring needs. Measured gain of the student over
# bicubic on the held-out photos (Gaussian8, PSNR-Y): +1.17 dB with the 3-block "tiny"
# model at 2400 steps per stage; +1.94 dB (every photo >= +1.26) with these sizes at 4000
# steps; +2.11 dB at 8000 steps but twice the time and chelsea down to +0.75; 24
# features at lr 1e-3 diverged (non-finite loss at step 1136).
DEMO_MODEL = dict(n_feats=16, n_blocks=10, n_resblocks=3)
DEMO_LR_PATCH = 16        # LR side of the training patch (HR 64 at x4)
DEMO_STEPS = 4000         # per stage
DEMO_EPOCH = 100          # steps per "epoch" of the classic schedule
DEMO_LR = 1e-3            # lr * 0.5^floor(e / 14), e = 1, 2, ...: halved at steps 1300, 2700
DEMO_DECAY_EPOCHS = 14


def classic_demo(c: ml_collections.ConfigDict) -> None:
    """Ours: `DEMO_STEPS` steps per stage in 100-step "epochs" of the classic schedule,
    lr 1e-3 halved every 14 epochs, no warm-up, the `DEMO_MODEL` sizes, on the bundled
    training photos (a few minutes per stage on a 2-core CPU)."""
    apply_demo(c)
    c.model.update(DEMO_MODEL)
    c.patch_size = scale_ref(c) * DEMO_LR_PATCH
    c.total_steps = DEMO_STEPS
    c.checkpoint_every_steps = 1000
    c.eval_every_steps = 1000
    c.schedule.update(dict(steps_per_epoch=DEMO_EPOCH, lr=DEMO_LR,
                           decay_epochs=DEMO_DECAY_EPOCHS, encoder_epochs=0))


# The GAN part (three stages): Real-ESRGAN data and degradation ------------------------

def gan_data_and_degradation(c: ml_collections.ConfigDict) -> None:
    """DF2K+OST GT pool, 400x400 pad-or-crop, hflip; second-order degradation drawn per
    group of the official per-process batch (9) with one 180-pair pool per group."""
    c.data.source = "folder"
    c.data.crop = "pad_or_crop"
    c.augment = "hflip"
    # The data crop (400) is the degradation's input: the pipeline reads its size from
    # the batch, so the yml-side `gt_input_size` is not a training field.
    c.patch_size = realesrgan.GT_INPUT_SIZE
    deg = realesrgan.default_config().to_dict()
    del deg["gt_input_size"]
    c.degradation = ml_collections.ConfigDict(deg)
    c.degradation.scale = scale_ref(c)


def gan_demo(c: ml_collections.ConfigDict) -> None:
    """Ours: the tiny demo with a pool of 4 batches in one group."""
    apply_demo(c)
    c.degradation.group_size = c.batch_size
    c.degradation.queue_size = 4 * c.batch_size


# --------------------------------------------------------------------------- checks --

def _fail(msg: str) -> None:
    raise ConfigError(msg)


def _check_unused_default(section, name: str, path: str, default, why: str) -> None:
    if name in section and section[name] != default:
        _fail(f"{path}.{name}={section[name]!r} has no effect {why}; leave it at "
              f"{default!r}")


def validate(c: ml_collections.ConfigDict) -> None:
    """Refuses, before anything compiles, a config whose fields contradict each other or
    that sets a field which would not act. Raises `ConfigError` naming the field(s)."""
    if c.stage not in STAGES:
        _fail(f"stage={c.stage!r}; expected one of {STAGES}")
    scale = c.model.scale
    if not isinstance(scale, int) or scale < 1:
        _fail(f"model.scale must be a positive integer, got {scale!r}")
    deg = c.degradation
    if deg.scale != scale:
        _fail(f"degradation.scale={deg.scale} contradicts model.scale={scale}: set only "
              "model.scale (it drives the degradation and the patch sizes)")
    if c.batch_size < 1 or c.total_steps < 1:
        _fail(f"batch_size ({c.batch_size}) and total_steps ({c.total_steps}) must be >= 1")
    if c.stage in CLASSIC_STAGES:
        _validate_classic(c, scale)
    else:
        _validate_gan(c, scale)
    _validate_eval(c)
    _validate_data(c)


def _validate_classic(c, scale: int) -> None:
    if c.patch_size % scale:
        _fail(f"patch_size={c.patch_size} (HR) is not a multiple of model.scale={scale}")
    deg = c.degradation
    if not deg.random:
        _fail("degradation.random=False trains on one fixed kernel; training draws the "
              "kernel (set it back to True)")
    blur = classic.BLUR_TYPES.get(deg.blur)
    if blur is None:
        _fail(f"degradation.blur={deg.blur!r}; expected one of {sorted(classic.BLUR_TYPES)}")
    ref = classic.default_config()
    unused = ("lambda_min", "lambda_max") if blur == "iso" else ("sig_min", "sig_max")
    for name in unused:
        _check_unused_default(deg, name, "degradation", ref[name],
                              f"with degradation.blur={deg.blur!r}")
    sched = c.schedule
    if sched.kind != "classic_epoch":
        _fail(f"schedule.kind={sched.kind!r}: the classic stages use 'classic_epoch'")
    if c.stage == "teacher":
        _check_unused_default(sched, "encoder_epochs", "schedule", 0,
                              "in the teacher stage (only the student has the warm-up)")
    if sched.get("encoder_epochs", 0) == 0:
        for name, default in (("lr_encoder", 2e-4), ("gamma_encoder", 0.1),
                              ("decay_encoder_epochs", 60)):
            _check_unused_default(sched, name, "schedule", default,
                                  "without an encoder warm-up (schedule.encoder_epochs=0)")
    if c.ema_decay:
        _fail(f"ema_decay={c.ema_decay}: the classic stages keep no EMA (set 0)")


def _validate_gan(c, scale: int) -> None:
    deg = c.degradation
    if deg.gt_size % scale:
        _fail(f"degradation.gt_size={deg.gt_size} is not a multiple of model.scale={scale}")
    if c.patch_size < deg.gt_size:
        _fail(f"degradation.gt_size={deg.gt_size} (the GT crop after degrading) is larger "
              f"than patch_size={c.patch_size} (the data crop it is taken from)")
    group = deg.group_size
    if group < 1 or c.batch_size % group:
        _fail(f"batch_size={c.batch_size} is not a multiple of degradation.group_size={group}")
    if deg.queue_size and deg.queue_size % group:
        _fail(f"degradation.queue_size={deg.queue_size} is not a multiple of "
              f"degradation.group_size={group} (one pool per group)")
    try:
        realesrgan.check_config(deg)
    except ValueError as exc:       # the messages start with the field name
        _fail(f"degradation.{exc}")
    if c.schedule.kind != "iteration":
        _fail(f"schedule.kind={c.schedule.kind!r}: the GAN stages use 'iteration'")


def _validate_eval(c) -> None:
    e = c.eval
    if e.protocol not in VALIDATION_PROTOCOLS:
        _fail(f"eval.protocol={e.protocol!r}; expected one of {VALIDATION_PROTOCOLS}")
    if e.protocol == "paired":
        if not (e.lr_folder and e.gt_folder):
            _fail("eval.protocol='paired' needs eval.lr_folder and eval.gt_folder")
        _check_unused_default(e, "folder", "eval", "", "with eval.protocol='paired'")
        _check_unused_default(e, "max_side", "eval", validation_config().max_side,
                              "with eval.protocol='paired' (the pairs are used whole)")
    else:
        for name in ("lr_folder", "gt_folder"):
            _check_unused_default(e, name, "eval", "",
                                  f"with eval.protocol={e.protocol!r} (use 'paired')")
    scale = c.model.scale
    if e.protocol == "iso" and c.eval_every_steps and scale not in (2, 3, 4):
        _fail(f"eval.protocol='iso' has Gaussian8 sigmas for x2, x3 and x4, not "
              f"model.scale={scale}: use eval.protocol='aniso' or 'paired', or "
              "eval_every_steps=0")
    ref = validation_config()
    if e.protocol != "aniso":
        for name in ("lambda_1", "lambda_2", "theta", "noise"):
            _check_unused_default(e, name, "eval", ref[name],
                                  f"with eval.protocol={e.protocol!r}")


# data.<field> -> the data.source that reads it (the others ignore it).
_SOURCE_FIELDS = {"path": "prepared", "tfds_name": "tfds",
                  "tfds_split": "tfds", "tfds_data_dir": "tfds", "image_key": "tfds",
                  "split": "bundled"}


def _validate_data(c) -> None:
    d = c.data
    ref = sources.default_data_config()
    for name, source in _SOURCE_FIELDS.items():
        if d.source != source:
            _check_unused_default(d, name, "data", ref[name],
                                  f"with data.source={d.source!r} (read by {source!r})")
    if d.crop != "random":
        _check_unused_default(d, "small_images", "data", ref.small_images,
                              f"with data.crop={d.crop!r} (read by 'random')")
    first, last = d.get("first", 0), d.get("last", 0)
    if first < 0 or last < 0 or (first and last and last < first):
        _fail(f"data.first={first} / data.last={last}: a 1-based inclusive range "
              "(0 = from the first / to the last image)")
    if (first or last) and d.source not in ("folder", "prepared"):
        _fail(f"data.first={first} / data.last={last} select images of an image folder "
              f"(data.source='folder' or 'prepared'), not of data.source={d.source!r}")
    if d.source not in ("folder", "prepared"):
        for name in ("folder", "recursive"):
            _check_unused_default(d, name, "data", ref[name],
                                  f"with data.source={d.source!r} (read by 'folder' and "
                                  "'prepared')")
