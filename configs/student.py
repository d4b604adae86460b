"""Classic KDSR_S student (stage 4), reference/TRAINING.md §1.5.

The frozen teacher comes from `--config.teacher=PATH` (a teacher training workdir, a
converted checkpoint dir or an official `model_TA_*.pt`). The student's generator
starts from the teacher's, its encoder from scratch; loss L1 + KD (tau 0.15).

Variants (comma-separated after the file name):
  L      KDSRs-L sizes
  aniso  aniso blur + noise 25, 100 encoder-only (KD-only) warm-up epochs, 500 epochs
  demo   tiny model on the bundled photos
"""

from kdsr_jax.train import config_base


def get_config(arg=None):
    variants = config_base.parse_arg(arg, ("L", "aniso", "demo"))
    # iso: 600 epochs, lr 1e-4 * 0.5^floor(e/150); aniso: 500 epochs total,
    # 2e-4 * 0.1^floor(e/60) for e <= 100 (encoder only), then 1e-4 * 0.5^floor((e-100)/125).
    return config_base.classic_stage("student", variants)
