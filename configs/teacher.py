"""Classic KDSR_T teacher (stage 3), reference/TRAINING.md §1.4.

Variants (comma-separated after the file name):
  L      KDSRs-L sizes (C=128, N=28, R=5) instead of KDSRs-M
  aniso  anisotropic Gaussian blur + noise 25 (main_anisonoise_KDSRsMx4_stage3.sh)
  demo   tiny model on the bundled photos, minutes on a laptop CPU
e.g. `--config configs/teacher.py:L` then `--config.batch_size=16` to override a field.
"""

from kdsr_jax.train import config_base


def get_config(arg=None):
    variants = config_base.parse_arg(arg, ("L", "aniso", "demo"))
    # 500 epochs x 971 it, lr 1e-4 * 0.5^floor(e/125), Adam(0.9, 0.999, 1e-8),
    # batch 64, HR patch 256, seed 1, L1 loss only.
    return config_base.classic_stage("teacher", variants)
