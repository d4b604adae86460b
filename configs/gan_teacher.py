"""KDSRNet_T (GAN side, stage 1), reference/TRAINING.md §2.3.

Real-ESRGAN second-order degradation on device, training-pair pool of 180, L1 only,
Adam(0.9, 0.99) at a constant 1e-4, EMA 0.999, 1M iterations, global batch 72.
Variant `demo`: tiny model on the bundled photos.
"""

from kdsr_jax.train import config_base


def get_config(arg=None):
    variants = config_base.parse_arg(arg, ("demo",))
    c = config_base.gan_stage("gan_teacher", variants)
    # §2.3: milestone 4e6 is never reached => constant 1e-4.
    c.schedule.kind = "iteration"
    c.schedule.lr = 1e-4
    c.schedule.gamma = 0.5
    c.schedule.decay_steps = 4_000_000
    if "demo" not in variants:
        c.total_steps = 1_000_000
    return c
