"""Random weights for tests and the TINY notebook mode, without compiling `init`.

`models.init_variables` traces and compiles the whole network's initialiser, which
costs tens of seconds on a loaded 2-core CPU. For exactness tests any weights of the
right shapes and scale do: we take the shapes from `jax.eval_shape` and fill them with
NumPy uniforms of PyTorch's default bound 1/sqrt(fan_in).
"""

from __future__ import annotations

import jax
import numpy as np

from kdsr_jax.models import init_variables


def random_variables(spec, seed: int = 0, lr_hw=(16, 16)):
    """Variables with the structure of `init_variables(spec, ...)`, random values."""
    shapes = jax.eval_shape(lambda k: init_variables(spec, k, lr_hw), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        names = [getattr(p, "key", str(p)) for p in path]
        shape = leaf.shape
        if names[-1] == "bias" or len(shape) < 2:
            bound = 0.1
        else:
            bound = 1.0 / np.sqrt(float(np.prod(shape[:-1])))
        return np.asarray(rng.uniform(-bound, bound, shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)
