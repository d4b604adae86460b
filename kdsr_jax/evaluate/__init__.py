"""Evaluation: KDSR metrics (`metrics`), the benchmark protocols (`protocol`) and
tiled / bucketed inference (`tiling`). See reference/EVALUATION.md."""

from kdsr_jax.evaluate.metrics import psnr_y, psnr_y_basicsr, ssim_y, ssim_y_basicsr

__all__ = ["psnr_y", "ssim_y", "psnr_y_basicsr", "ssim_y_basicsr"]
