"""kdsr_jax.degradation: on-device LR synthesis (reference/DEGRADATION.md).

Import the submodules directly (nothing is imported eagerly here):
* `filters` -- reflect-padded depthwise `filter2d` (§1.4, §2.4), shared by both pipelines;
* `kernels`, `bicubic`, `classic` -- the classic KDSR pipeline (§1):
  `classic.degrade(key, hr, classic.default_config())`;
* the Real-ESRGAN second-order pipeline and its helpers (§2) -- `realesrgan`,
  `random_kernels`, `noise`, `jpeg`, `interpolate`, `sharpen`, `pool`.
"""
