"""Building blocks shared by the `configs/*.py` files (ml_collections ConfigDicts).

Every number here is an official hyperparameter from reference/TRAINING.md (section
given next to it) unless it is marked as ours (logging, checkpointing, demo sizes).
The config files call these helpers and read like hyperparameter tables.
"""

from __future__ import annotations

import ml_collections

# reference/TRAINING.md §1.1: 3450 DF2K images x repeat 18 / batch 64 = 971 iterations.
CLASSIC_STEPS_PER_EPOCH = 971
CLASSIC_BATCH = 64            # §1.1 global batch (4 GPUs x 16)
CLASSIC_HR_PATCH = 256        # §1.1 HR patch = scale (4) x patch_size (64)
CLASSIC_SEED = 1              # §1.1 --seed 1
CLASSIC_ADAM = dict(b1=0.9, b2=0.999, eps=1e-8)  # §1.3
CLASSIC_LR = 1e-4             # §1.2 lr_sr
CLASSIC_GAMMA = 0.5           # §1.2 gamma_sr
KD_TEMPERATURE = 0.15         # §0
KD_WEIGHT = 1.0               # §0

ANISO_TRAIN_NOISE = 25.0      # §1.2 aniso scripts: --noise 25 (0-255 units)

GAN_ADAM = dict(b1=0.9, b2=0.99, eps=1e-8)  # §2.2
GAN_BATCH = 72                # §2.1: 9 per GPU x 8 GPUs
GAN_GT_CROP = 400             # §2.1 GT crop fed to the degradation
GAN_SEED = 0                  # §2.1 manual_seed: 0
GAN_EMA_DECAY = 0.999         # §2.2
# DEGRADATION.md §2.3: a pool of 180 pairs per process at 9 per process = 20 batches.
# Our step sees the global batch, so the (global) pool holds 20 global batches.
GAN_POOL_BATCHES = 180 // 9

DEMO_CLASSIC_STEPS = 2400     # ours: length of the classic `:demo` stages


def parse_arg(arg: str | None, allowed: tuple[str, ...]) -> set[str]:
    """`"L,aniso"` -> {"L", "aniso"}; unknown variant names are an error."""
    tokens = {t.strip() for t in (arg or "").split(",") if t.strip()}
    unknown = sorted(tokens - set(allowed))
    if unknown:
        raise ValueError(f"unknown config variant(s) {unknown}; allowed: {list(allowed)}")
    return tokens


def data_config(source: str = "folder", crop: str = "random") -> ml_collections.ConfigDict:
    """The HR source (kdsr_jax.data.sources): 'folder' (DF2K HR PNGs, or the DF2K+OST GT
    pool; set `--config.data.folder=...`), 'tfds' or 'bundled' (the demo photos)."""
    from kdsr_jax.data import sources

    cfg = sources.default_data_config()
    cfg.source = source
    cfg.crop = crop     # 'random' (classic §1.1) | 'pad_or_crop' (GAN §2.1)
    return cfg


def classic_degradation(aniso: bool = False) -> ml_collections.ConfigDict:
    """Training-time classic degradation (DEGRADATION.md §1, TRAINING.md §1.2)."""
    from kdsr_jax.degradation import classic

    cfg = classic.default_config()     # random=True, one draw per batch (util2)
    cfg.blur = "aniso" if aniso else "iso"
    cfg.noise = ANISO_TRAIN_NOISE if aniso else 0.0
    return cfg


def base_config(stage: str) -> ml_collections.ConfigDict:
    """Fields every stage has; the config files fill in the stage's values."""
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.seed = 0
    c.batch_size = 0           # global batch size
    c.patch_size = 0           # HR patch side fed by the data pipeline
    c.augment = "dihedral"     # 'dihedral' (classic §1.1) | 'hflip' (GAN §2.1)
    c.total_steps = 0
    # SR model: a named preset (kdsr_jax.models.spec.PRESETS); n_feats / n_blocks /
    # n_resblocks > 0 override the preset's sizes. dtype = compute dtype.
    c.model = ml_collections.ConfigDict(dict(
        preset="KDSRs-M", scale=4, dynconv="auto", dtype="float32",
        n_feats=0, n_blocks=0, n_resblocks=0))
    c.optimizer = ml_collections.ConfigDict(dict(CLASSIC_ADAM))
    c.schedule = ml_collections.ConfigDict()
    c.ema_decay = 0.0          # 0 = no EMA
    c.teacher = ""             # student stages: teacher workdir / converted dir / .pth
    c.student = ""             # GAN stage: the KDSRNet_S checkpoint to start from
    c.kd = ml_collections.ConfigDict(dict(temperature=KD_TEMPERATURE, weight=KD_WEIGHT))
    # Ours: logging / checkpointing / evaluation cadence.
    c.log_every_steps = 100
    c.checkpoint_every_steps = 5000
    c.keep_checkpoints = 3
    c.eval_every_steps = CLASSIC_STEPS_PER_EPOCH
    c.eval = ml_collections.ConfigDict(dict(
        split="heldout",       # bundled held-out photos (kdsr_jax.data.samples)
        num_images=4,
        max_side=256,          # centre crop of the HR image (0 = full image)
        blur_type="iso_gaussian", sig=2.6, lambda_1=4.0, lambda_2=1.5, theta=120.0,
        noise=0.0,
        num_tensorboard_images=2))
    return c


def classic_stage(stage: str, variants: set[str]) -> ml_collections.ConfigDict:
    """Classic teacher (stage 3) / student (stage 4) per TRAINING.md §1.2-1.5."""
    c = base_config(stage)
    aniso = "aniso" in variants
    c.seed = CLASSIC_SEED
    c.batch_size = CLASSIC_BATCH
    c.patch_size = CLASSIC_HR_PATCH
    c.augment = "dihedral"
    c.model.preset = "KDSRs-L" if "L" in variants else "KDSRs-M"
    c.data = data_config("folder", crop="random")
    c.degradation = classic_degradation(aniso)
    student = stage == "student"
    # §1.2 table: epochs_sr, lr_decay_sr, epochs_encoder per launch script.
    if student and not aniso:
        epochs, decay, enc_epochs = 600, 150, 0
    elif student and aniso:
        epochs, decay, enc_epochs = 500, 125, 100
    else:
        epochs, decay, enc_epochs = 500, 125, 0
    c.schedule = ml_collections.ConfigDict(dict(
        kind="classic_epoch", steps_per_epoch=CLASSIC_STEPS_PER_EPOCH,
        lr=CLASSIC_LR, gamma=CLASSIC_GAMMA, decay_epochs=decay,
        encoder_epochs=enc_epochs, lr_encoder=2e-4, gamma_encoder=0.1,
        decay_encoder_epochs=60))
    c.total_steps = epochs * CLASSIC_STEPS_PER_EPOCH
    c.checkpoint_every_steps = CLASSIC_STEPS_PER_EPOCH * 5
    c.eval_every_steps = CLASSIC_STEPS_PER_EPOCH
    if aniso:   # EVALUATION.md: aniso validation lambda 4.0/1.5, theta 120, noise 10
        c.eval.blur_type = "aniso_gaussian"
        c.eval.noise = 10.0
    else:       # iso validation sigma (--sig 3.6)
        c.eval.sig = 3.6
    if "demo" in variants:
        apply_demo(c)
        # Ours: 2400 steps of 100-step "epochs", higher lr, halved every 800 steps
        # (about 2 minutes per stage on a 2-core CPU).
        c.total_steps = DEMO_CLASSIC_STEPS
        c.schedule.update(dict(steps_per_epoch=100, lr=1e-3, decay_epochs=8,
                               encoder_epochs=0))
    return c


def apply_demo(c: ml_collections.ConfigDict) -> None:
    """Ours: a tiny model on the bundled photos that trains in minutes on a laptop CPU."""
    c.model.preset = "tiny"
    c.data.source = "bundled"
    c.data.split = "train"
    c.batch_size = 8
    c.patch_size = 64
    c.total_steps = 600
    c.log_every_steps = 25
    c.checkpoint_every_steps = 200
    c.eval_every_steps = 300
    c.eval.num_images = 2
    c.eval.max_side = 128
    c.eval.sig = 2.6


def realesrgan_degradation() -> ml_collections.ConfigDict:
    """Second-order Real-ESRGAN degradation (DEGRADATION.md §2.2)."""
    from kdsr_jax.degradation import realesrgan

    return ml_collections.ConfigDict(realesrgan.default_config())


def gan_stage(stage: str, variants: set[str]) -> ml_collections.ConfigDict:
    """KDSR-GAN stages (TRAINING.md §2): KDSRNet_T, KDSRNet_S, KDSRGAN_S."""
    c = base_config(stage)
    c.seed = GAN_SEED
    c.batch_size = GAN_BATCH
    c.patch_size = GAN_GT_CROP
    c.augment = "hflip"
    c.model.preset = "KDSR-GAN"
    c.optimizer = ml_collections.ConfigDict(dict(GAN_ADAM))
    c.ema_decay = GAN_EMA_DECAY
    c.data = data_config("folder", crop="pad_or_crop")
    c.degradation = realesrgan_degradation()
    c.degradation.queue_size = GAN_POOL_BATCHES * GAN_BATCH
    c.checkpoint_every_steps = 10_000   # §2.2 checkpoints / validation every 1e4 it
    c.eval_every_steps = 10_000
    if "demo" in variants:
        apply_demo(c)
        c.degradation.queue_size = 4 * c.batch_size
        c.patch_size = c.degradation.gt_input_size
    return c
