"""KDSRNet_S (GAN side, stage 2: L1 + KD): `options/train_kdsrnet_x4ST.yml`.

Teacher (its EMA weights) from `--config.teacher=PATH`; the student's generator starts
from it, the encoder (KD-IDE) from scratch. G lr 2e-4 * 0.5^floor(it/600000) (set every
iteration by the official model, overriding the yml's milestones), 1M iterations.
The yml's encoder_iter / lr_encoder fields are never read there: no warm-up here.
Variant `demo`: tiny model on the bundled photos.
"""

import ml_collections

from kdsr_jax.train import config_base


def get_config(arg=None):
    variants = config_base.parse_arg(arg, ("demo",))
    c = config_base.base_config("gan_student")
    c.kd = config_base.kd_config()                 # KD loss: tau 0.15, weight 1
    c.teacher = ""                                 # --config.teacher=PATH (required)
    c.seed = 0
    c.batch_size = 72
    c.model.preset = "KDSR-GAN"
    c.optimizer = ml_collections.ConfigDict(dict(b1=0.9, b2=0.99, eps=1e-8))
    c.schedule = ml_collections.ConfigDict(dict(
        kind="iteration", lr=2e-4, gamma=0.5, decay_steps=600_000))
    c.ema_decay = 0.999
    c.total_steps = 1_000_000
    c.checkpoint_every_steps = 10_000
    c.eval_every_steps = 10_000
    config_base.gan_data_and_degradation(c)
    if "demo" in variants:
        config_base.gan_demo(c)
    return c
