"""Load any trained or converted KDSR model: `load(path) -> (model, variables)`.

`path` may be
* a training workdir (`scripts/train.py --workdir`): the latest checkpoint; the EMA
  weights when the run keeps an EMA (GAN stages), otherwise the trained weights; only
  the SR model's variables (no optimizer, discriminator or pool);
* a converted checkpoint directory (`kdsr_jax.convert.save_converted`);
* an official weight file (via `kdsr_jax.convert.from_torch`): a torch.save file or a
  `.safetensors` file, recognised by content whatever its name (`.pth`, `.pt`, `.PTH`,
  `.ckpt`, ...);
* a registry name of an official release (`KDSRs-M-iso-x4`, ... see `kdsr_jax.hub`), an
  http(s) URL, or a Google Drive link / `gdrive:<id>`: downloaded once into the cache
  (`$KDSR_JAX_CACHE`), converted once, and loaded from the cache afterwards (offline).

Every load refuses NaN/inf weights, naming the key (`ConversionError`).
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp
from etils import epath

from kdsr_jax import convert, hub, models, orbax_steps
from kdsr_jax.convert.mapping import ConversionError, check_finite
from kdsr_jax.models.spec import MODEL_JSON, ModelSpec

# The training workdir layout (written by kdsr_jax.train, read here).
CHECKPOINT_DIR = "checkpoints"     # orbax steps
CONFIG_JSON = "config.json"        # the run's full config


class LoadError(ValueError):
    """`path` is not something `load` understands (one-line message)."""


def is_training_workdir(path: str) -> bool:
    return (os.path.isdir(os.path.join(path, CHECKPOINT_DIR))
            and os.path.isfile(os.path.join(path, MODEL_JSON)))


def _restore_state(mgr, root: str, workdir: str, step: int | None):
    """(step, restored) of the given step, or of the newest readable one (damaged newer
    steps are named once in a warning). The state is restored onto this process's first
    device whatever topology wrote it (several hosts/devices): orbax refuses a
    target-less restore across topologies, so the target comes from the saved metadata."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def restore(s):
        saved = ocp.StandardCheckpointHandler().metadata(epath.Path(root) / str(s) / "state")
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              saved)
        return mgr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))

    if step is not None:
        return step, restore(step)
    step, restored, _ = orbax_steps.restore_newest_readable(
        mgr.all_steps(), lambda s: os.path.join(root, str(s)), restore, workdir,
        items=("state",))
    if step is None:
        raise LoadError(f"{workdir}: training workdir without any checkpoint yet")
    return step, restored


def load_workdir(workdir: str, step: int | None = None):
    """(model, {'params': ...}) from a training workdir (latest step by default)."""

    with open(os.path.join(workdir, MODEL_JSON)) as f:
        meta = json.load(f)
    # A bare ModelSpec, or {'spec': ...} as kdsr_jax.convert writes it.
    spec = ModelSpec.from_dict(meta["spec"] if "spec" in meta else meta)
    root = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    mgr = orbax_steps.open_manager(lambda: ocp.CheckpointManager(root))
    try:
        step, restored = _restore_state(mgr, root, workdir, step)
    finally:
        mgr.close()
    state = restored.state
    params = state.get("ema_params") or state["params"]
    return models.build_model(spec), {"params": jax.tree.map(jax.numpy.asarray, params)}


def load(path: str):
    """(model, variables) from a training workdir, a converted dir, a weight file, or a
    registry name / URL / Google Drive link (see the module docstring). One-line
    ValueErrors (`LoadError`, `ConversionError`, `CheckpointError`, `hub.HubError`)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        if hub.is_remote(path):
            return hub.load(path)
        raise LoadError(f"checkpoint not found: {path} (nor a registry name, URL or "
                        f"Google Drive link; `--list-models` shows the names: "
                        f"{', '.join(hub.REGISTRY)})")
    if os.path.isdir(path):
        if is_training_workdir(path):
            model, variables = load_workdir(path)
            try:
                check_finite(convert._flat_named(variables))
            except ConversionError as e:
                raise ConversionError(f"{path}: {e}") from None
            return model, variables
        if os.path.isfile(os.path.join(path, MODEL_JSON)):
            return convert.load_converted(path)
        raise LoadError(f"{path}: not a training workdir (no {CHECKPOINT_DIR}/ and "
                        f"{MODEL_JSON}) nor a converted checkpoint (no {MODEL_JSON})")
    if convert.is_weight_file(path):
        return convert.from_torch(path)
    raise LoadError(f"{path}: expected a training workdir, a converted checkpoint directory "
                    "or a weight file (torch.save .pth/.pt/.ckpt or .safetensors); this "
                    "file is neither (checked by content)")
