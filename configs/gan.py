"""KDSRGAN_S (GAN side, stage 3): `options/train_kdsrgan_x4ST.yml` (V1), `..STV2.yml` (V2).

Starts from a KDSRNet_S checkpoint (`--config.student=PATH`, EMA weights) with the frozen
teacher from `--config.teacher=PATH`. G loss = L1 + KD + perceptual (VGG19) + vanilla
GAN, all weight 1; U-Net discriminator with spectral norm, Adam(0.9, 0.99) 1e-4 for G
and D, 400k iterations, EMA 0.999. The VGG19 weights are torchvision's ImageNet
`vgg19-dcbb9e9d.pth`, given with `--config.perceptual.vgg_path=PATH`.

Variants: `v2` (KDSR-GANV2: the teacher sees the USM-sharpened GT; the yml's
l1_gt_usm / percep_gt_usm flags have no other effect in the official model), `demo`.
"""

import ml_collections

from kdsr_jax.train import config_base


def get_config(arg=None):
    variants = config_base.parse_arg(arg, ("v2", "demo"))
    c = config_base.base_config("gan")
    c.kd = config_base.kd_config()                 # KD loss: tau 0.15, weight 1
    c.teacher = ""                                 # --config.teacher=PATH (required)
    c.student = ""                                 # --config.student=PATH (required)
    c.seed = 0
    c.batch_size = 72
    c.model.preset = "KDSR-GAN"
    c.optimizer = ml_collections.ConfigDict(dict(b1=0.9, b2=0.99, eps=1e-8))
    # G: 1e-4 * 0.5^floor(it/400000), i.e. 5e-5 only at the final iteration 400k.
    c.schedule = ml_collections.ConfigDict(dict(
        kind="iteration", lr=1e-4, gamma=0.5, decay_steps=400_000))
    c.d_lr = 1e-4                                  # D lr stays 1e-4 for the whole run
    c.ema_decay = 0.999
    c.total_steps = 400_000
    c.checkpoint_every_steps = 10_000
    c.eval_every_steps = 10_000
    c.usm_teacher_gt = "v2" in variants            # V2: teacher's HR input is USM(gt)
    c.gan_weight = 1.0
    # UNetDiscriminatorSN(num_in_ch=3, num_feat=64, skip_connection=True), random init.
    c.discriminator = ml_collections.ConfigDict(dict(num_feat=64, skip_connection=True))
    c.perceptual = ml_collections.ConfigDict(dict(
        vgg_path="",
        weight=1.0,
        layer_weights=dict(conv1_2=0.1, conv2_2=0.1, conv3_4=1.0, conv4_4=1.0, conv5_4=1.0)))
    config_base.gan_data_and_degradation(c)
    if "demo" in variants:
        config_base.gan_demo(c)
    return c
