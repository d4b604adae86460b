"""KDSRNet_T (GAN side, stage 1): `options/train_kdsrnet_x4TA.yml`.

Real-ESRGAN second-order degradation on device (drawn per group of 9, the official
per-process batch, with one 180-pair training-pair pool per group), L1 only,
Adam(0.9, 0.99) at a constant 1e-4, EMA 0.999, 1M iterations, global batch 72.
Variant `demo`: tiny model on the bundled photos.
"""

import ml_collections

from kdsr_jax.train import config_base


def get_config(arg=None):
    variants = config_base.parse_arg(arg, ("demo",))
    c = config_base.base_config("gan_teacher")
    c.seed = 0                                     # manual_seed: 0
    c.batch_size = 72                              # 8 GPUs x batch_size_per_gpu 9
    c.model.preset = "KDSR-GAN"                    # C=128, N=42, R=6
    c.optimizer = ml_collections.ConfigDict(dict(b1=0.9, b2=0.99, eps=1e-8))
    # milestones [4000000] are never reached: lr stays 1e-4.
    c.schedule = ml_collections.ConfigDict(dict(
        kind="iteration", lr=1e-4, gamma=0.5, decay_steps=4_000_000))
    c.ema_decay = 0.999
    c.total_steps = 1_000_000
    c.checkpoint_every_steps = 10_000              # save / val freq 1e4
    c.eval_every_steps = 10_000
    config_base.gan_data_and_degradation(c)
    if "demo" in variants:
        config_base.gan_demo(c)
    return c
