"""kdsr-jax: KDSR (ICLR 2023) blind super-resolution in JAX/Flax.

Subpackages: `models` (Flax networks), `degradation` (on-device LR synthesis),
`data` (HR sources), `train` (steps, losses, loop), `convert` (official PyTorch
checkpoints), `evaluate` (metrics and benchmark protocol), `checkpoints` (load any
kind of trained/converted model).
"""

__version__ = "0.1.0"
