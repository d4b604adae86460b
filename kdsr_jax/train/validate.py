"""Start-up checks of a training config and of the parameters about to be saved.

`check_config(config)` rejects, in one line naming every offending `--config.<field>`,
numbers that would crash, silently do nothing or destroy checkpoints later (e.g.
`keep_checkpoints=0` deletes every checkpoint, `checkpoint_every_steps=0` is a
ZeroDivisionError after the first step, `total_steps=-5` trains nothing) and unknown
compute dtypes. Every number in the config must be finite; the fields below have
ranges; unknown fields whose names end in `_prob` are probabilities.

`nonfinite_leaves(tree)` lists the NaN/inf leaves of a pytree (the trainer checks the
updated parameters with it before every save).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")

# field -> (kind, low, high, low_inclusive, high_inclusive); kind 'int' or 'float'.
_INF = math.inf
_POSITIVE_INT = ("int", 1, _INF, True, True)
_COUNT = ("int", 0, _INF, True, True)
_POSITIVE = ("float", 0.0, _INF, False, True)
_NONNEG = ("float", 0.0, _INF, True, True)
_FRACTION = ("float", 0.0, 1.0, True, False)     # [0, 1)
_FACTOR = ("float", 0.0, 1.0, False, True)       # (0, 1]
_PROB = ("float", 0.0, 1.0, True, True)

RULES: dict[str, tuple] = {
    "seed": _COUNT,
    "batch_size": _POSITIVE_INT,
    "patch_size": _POSITIVE_INT,
    "total_steps": _POSITIVE_INT,
    "log_every_steps": _POSITIVE_INT,
    "checkpoint_every_steps": _POSITIVE_INT,
    "keep_checkpoints": _POSITIVE_INT,
    "eval_every_steps": _COUNT,                    # 0 = no evaluation
    "ema_decay": _FRACTION,                        # 0 = no EMA
    "d_lr": _POSITIVE,
    "gan_weight": _NONNEG,
    "model.scale": _POSITIVE_INT,
    "model.n_feats": _COUNT,
    "model.n_blocks": _COUNT,
    "model.n_resblocks": _COUNT,
    "optimizer.b1": _FRACTION,
    "optimizer.b2": _FRACTION,
    "optimizer.eps": _POSITIVE,
    "kd.temperature": _POSITIVE,
    "kd.weight": _NONNEG,
    "schedule.lr": _POSITIVE,
    "schedule.lr_encoder": _POSITIVE,
    "schedule.gamma": _FACTOR,
    "schedule.gamma_encoder": _FACTOR,
    "schedule.steps_per_epoch": _POSITIVE_INT,
    "schedule.decay_epochs": _POSITIVE_INT,
    "schedule.decay_encoder_epochs": _POSITIVE_INT,
    "schedule.encoder_epochs": _COUNT,
    "schedule.decay_steps": _POSITIVE_INT,
    "perceptual.weight": _NONNEG,
    "discriminator.num_feat": _POSITIVE_INT,
    "eval.num_images": _POSITIVE_INT,
    "eval.max_side": _COUNT,                       # 0 = full image
    "eval.num_tensorboard_images": _COUNT,
    "eval.noise": _NONNEG,
    "eval.sig": _NONNEG,
    "eval.lambda_1": _POSITIVE,
    "eval.lambda_2": _POSITIVE,
    "data.cache_mb": _COUNT,
    "data.min_size": _COUNT,
    "data.prefetch_batches": _COUNT,
    "data.worker_threads": _COUNT,
    "data.worker_processes": _COUNT,
    "degradation.scale": _POSITIVE_INT,
    "degradation.gt_size": _POSITIVE_INT,
    "degradation.gt_input_size": _POSITIVE_INT,
    "degradation.queue_size": _COUNT,
    "degradation.noise": _NONNEG,
    "degradation.kernel_size": _POSITIVE_INT,
    "degradation.blur_kernel_size": _POSITIVE_INT,
}
# Prefix rules: every leaf under it.
PREFIX_RULES = {"perceptual.layer_weights.": _NONNEG}


def _flatten(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _numbers(v):
    """Numbers inside a leaf (a number, or a list/tuple of them); bools are not numbers."""
    if isinstance(v, bool):
        return []
    if isinstance(v, (int, float)):
        return [v]
    if isinstance(v, (list, tuple)):
        return [x for item in v for x in _numbers(item)]
    return []


def _range_text(rule) -> str:
    kind, lo, hi, lo_in, hi_in = rule
    if hi == _INF:
        return f">= {lo}" if lo_in else f"> {lo}"
    return f"in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"


def _ok(x, rule) -> bool:
    kind, lo, hi, lo_in, hi_in = rule
    if kind == "int" and not float(x).is_integer():
        return False
    return (x >= lo if lo_in else x > lo) and (x <= hi if hi_in else x < hi)


def config_problems(config) -> list[str]:
    """Every problem of `config` as '--config.<field>=<value>: <why>' strings."""
    problems = []
    tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    for name, value in _flatten(tree):
        numbers = _numbers(value)
        if any(not math.isfinite(x) for x in numbers):
            problems.append(f"--config.{name}={value}: must be finite")
            continue
        rule = RULES.get(name) or next(
            (r for p, r in PREFIX_RULES.items() if name.startswith(p)), None)
        if rule is None and (name.endswith("_prob") or name.endswith("_prob2")):
            rule = _PROB
        if rule is None or not numbers:
            continue
        if not all(_ok(x, rule) for x in numbers):
            problems.append(f"--config.{name}={value}: must be "
                            f"{'an integer ' if rule[0] == 'int' else ''}{_range_text(rule)}")
    dtype = tree.get("model", {}).get("dtype")
    if dtype is not None and dtype not in COMPUTE_DTYPES:
        problems.append(f"--config.model.dtype={dtype!r}: expected one of {list(COMPUTE_DTYPES)}")
    return problems


def check_config(config) -> None:
    """Raises ValueError (one line listing every problem) if `config` is not usable."""
    problems = config_problems(config)
    if problems:
        raise ValueError("invalid config: " + "; ".join(problems))


def nonfinite_leaves(tree: Any, limit: int = 3) -> list[str]:
    """Key paths ('params.G.head.kernel', ...) of floating leaves of `tree` holding a
    NaN or inf (at most `limit`); [] when all are finite. One device reduction per leaf,
    one transfer."""
    leaves = [(jax.tree_util.keystr(path, simple=True, separator="."), x)
              for path, x in jax.tree_util.tree_leaves_with_path(tree)
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return []
    flags = jax.device_get([jnp.all(jnp.isfinite(x)) for _, x in leaves])
    bad = [name for (name, _), ok in zip(leaves, flags) if not bool(np.asarray(ok))]
    return bad[:limit]
