"""Classic KDSR_T teacher (stage 3): `main_{iso,anisonoise}_KDSRs{M,L}x4_stage3.sh`.

Variants (comma-separated after the file name):
  L      KDSRs-L sizes (C=128, N=28, R=5) instead of KDSRs-M (C=64, N=53, R=9)
  aniso  anisotropic Gaussian blur + noise 25 (main_anisonoise_KDSRsMx4_stage3.sh)
  demo   the small demo model on the bundled photos (`config_base.classic_demo`)
e.g. `--config configs/teacher.py:L` then `--config.batch_size=16` to override a field;
`--config.model.scale=2` trains x2 (the degradation and the patch follow).
"""

import ml_collections

from kdsr_jax.train import config_base
from kdsr_jax.train.config_base import CLASSIC_LR_PATCH, CLASSIC_STEPS_PER_EPOCH as EPOCH


def get_config(arg=None):
    variants = config_base.parse_arg(arg, ("L", "aniso", "demo"))
    c = config_base.base_config("teacher")
    c.seed = 1                                                  # --seed 1
    c.batch_size = 64                                           # 4 GPUs x 16
    c.patch_size = config_base.scale_ref(c) * CLASSIC_LR_PATCH  # HR 256 at x4
    c.augment = "dihedral"                # hflip, vflip, transpose, each p = 0.5
    c.model.preset = "KDSRs-L" if "L" in variants else "KDSRs-M"
    c.optimizer = ml_collections.ConfigDict(dict(b1=0.9, b2=0.999, eps=1e-8))
    # lr(e) = 1e-4 * 0.5^floor(e/125) for epochs e = 1..500 of 971 iterations.
    c.schedule = ml_collections.ConfigDict(dict(
        kind="classic_epoch", steps_per_epoch=EPOCH, lr=1e-4, gamma=0.5,
        decay_epochs=125, encoder_epochs=0, lr_encoder=2e-4, gamma_encoder=0.1,
        decay_encoder_epochs=60))
    c.total_steps = 500 * EPOCH
    c.checkpoint_every_steps = 5 * EPOCH
    c.eval_every_steps = EPOCH                                  # validation every epoch
    config_base.classic_data_and_degradation(c, aniso="aniso" in variants)
    if "demo" in variants:
        config_base.classic_demo(c)
    return c
