"""Load any trained or converted KDSR model: `load(path) -> (model, variables)`.

`path` may be
* a training workdir (`scripts/train.py --workdir`): the latest checkpoint; the EMA
  weights when the run keeps an EMA (GAN stages), otherwise the trained weights; only
  the SR model's variables (no optimizer, discriminator or pool);
* a converted checkpoint directory (`kdsr_jax.convert.save_converted`);
* an official PyTorch checkpoint file (`.pth` / `.pt`, via `kdsr_jax.convert.from_torch`).
"""

from __future__ import annotations

import json
import os

import jax

from kdsr_jax import models
from kdsr_jax.models.spec import ModelSpec

TRAIN_CHECKPOINT_DIR = "checkpoints"   # kdsr_jax.train.loop.CHECKPOINT_DIR
MODEL_JSON = "model.json"


class LoadError(ValueError):
    """`path` is not something `load` understands (one-line message)."""


def is_training_workdir(path: str) -> bool:
    return (os.path.isdir(os.path.join(path, TRAIN_CHECKPOINT_DIR))
            and os.path.isfile(os.path.join(path, MODEL_JSON)))


def load_workdir(workdir: str, step: int | None = None):
    """(model, {'params': ...}) from a training workdir (latest step by default)."""
    import orbax.checkpoint as ocp
    from etils import epath

    with open(os.path.join(workdir, MODEL_JSON)) as f:
        meta = json.load(f)
    # A bare ModelSpec, or {'spec': ...} as kdsr_jax.convert writes it.
    spec = ModelSpec.from_dict(meta["spec"] if "spec" in meta else meta)
    mgr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, TRAIN_CHECKPOINT_DIR)))
    try:
        step = mgr.latest_step() if step is None else step
        if step is None:
            raise LoadError(f"{workdir}: training workdir without any checkpoint yet")
        # Restore onto this process's first device whatever topology wrote it (a run on
        # several hosts/devices); orbax refuses a target-less restore across topologies.
        saved = ocp.StandardCheckpointHandler().metadata(
            epath.Path(mgr.directory) / str(step) / "state")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              saved)
        restored = mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))
    finally:
        mgr.close()
    state = restored.state
    params = state.get("ema_params") or state["params"]
    return models.build_model(spec), {"params": jax.tree.map(jax.numpy.asarray, params)}


def load(path: str):
    """(model, variables) from a training workdir, a converted dir or an official .pth."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LoadError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        if is_training_workdir(path):
            return load_workdir(path)
        if os.path.isfile(os.path.join(path, MODEL_JSON)):
            from kdsr_jax import convert

            return convert.load_converted(path)
        raise LoadError(f"{path}: not a training workdir (no {TRAIN_CHECKPOINT_DIR}/ and "
                        f"{MODEL_JSON}) nor a converted checkpoint (no {MODEL_JSON})")
    if path.endswith((".pth", ".pt")):
        from kdsr_jax import convert

        return convert.from_torch(path)
    raise LoadError(f"{path}: expected a training workdir, a converted checkpoint directory "
                    "or an official PyTorch .pth/.pt file")
