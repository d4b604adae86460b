"""Classic KDSR_S student (stage 4): `main_{iso,anisonoise}_KDSRs{M,L}x4_stage4.sh`.

The frozen teacher comes from `--config.teacher=PATH` (a teacher training workdir, a
converted checkpoint dir or an official `model_TA_*.pt`). The student's generator
starts from the teacher's, its encoder (KD-IDE) from scratch; loss L1 + KD (tau 0.15).

Variants (comma-separated after the file name):
  L      KDSRs-L sizes
  aniso  aniso blur + noise 25, 100 encoder-only (KD-only) warm-up epochs, 500 epochs
  demo   the small demo model on the bundled photos (`config_base.classic_demo`)
"""

import ml_collections

from kdsr_jax.train import config_base
from kdsr_jax.train.config_base import CLASSIC_LR_PATCH, CLASSIC_STEPS_PER_EPOCH as EPOCH


def get_config(arg=None):
    variants = config_base.parse_arg(arg, ("L", "aniso", "demo"))
    aniso = "aniso" in variants
    c = config_base.base_config("student")
    c.kd = config_base.kd_config()                 # KD loss: tau 0.15, weight 1
    c.teacher = ""                                              # --config.teacher=PATH
    c.seed = 1
    c.batch_size = 64
    c.patch_size = config_base.scale_ref(c) * CLASSIC_LR_PATCH  # HR 256 at x4
    c.augment = "dihedral"
    c.model.preset = "KDSRs-L" if "L" in variants else "KDSRs-M"
    c.optimizer = ml_collections.ConfigDict(dict(b1=0.9, b2=0.999, eps=1e-8))
    if aniso:
        # 500 epochs in total: e <= 100 KD-only warm-up of the encoder at
        # 2e-4 * 0.1^floor(e/60), then L1 + KD at 1e-4 * 0.5^floor((e-100)/125).
        epochs, decay, encoder_epochs = 500, 125, 100
    else:
        # 600 epochs, lr 1e-4 * 0.5^floor(e/150).
        epochs, decay, encoder_epochs = 600, 150, 0
    c.schedule = ml_collections.ConfigDict(dict(
        kind="classic_epoch", steps_per_epoch=EPOCH, lr=1e-4, gamma=0.5,
        decay_epochs=decay, encoder_epochs=encoder_epochs, lr_encoder=2e-4,
        gamma_encoder=0.1, decay_encoder_epochs=60))
    c.total_steps = epochs * EPOCH
    c.checkpoint_every_steps = 5 * EPOCH
    c.eval_every_steps = EPOCH
    config_base.classic_data_and_degradation(c, aniso=aniso)
    if "demo" in variants:
        config_base.classic_demo(c)
    return c
