"""KDSRNet_S (GAN side, stage 2: L1 + KD), reference/TRAINING.md §2.4.

Teacher (its EMA weights) from `--config.teacher=PATH`; the student's generator starts
from it, the encoder from scratch. G lr 2e-4 * 0.5^floor(it/600000), 1M iterations.
Variant `demo`: tiny model on the bundled photos.
"""

from kdsr_jax.train import config_base


def get_config(arg=None):
    variants = config_base.parse_arg(arg, ("demo",))
    c = config_base.gan_stage("gan_student", variants)
    c.schedule.kind = "iteration"
    c.schedule.lr = 2e-4
    c.schedule.gamma = 0.5
    c.schedule.decay_steps = 600_000
    if "demo" not in variants:
        c.total_steps = 1_000_000
    return c
