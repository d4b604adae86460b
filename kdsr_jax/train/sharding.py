"""Data-parallel sharding of the training step (one `jax.jit`, NamedSharding).

The batch is split along its first axis over a 1-D mesh axis 'data'; the train state
and the frozen networks are replicated. The state is donated, so an update happens in
place. The same program runs on 1 device, N devices or several hosts.

Multi-host: start the same command on every host; `maybe_initialize_distributed()`
calls `jax.distributed.initialize()` (coordinator address, process count and id from
the cluster environment: SLURM, Cloud TPU, or JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID). Each host's data iterator reads its own share of
the global batch (`batch_size / process_count` images) and `global_batch` assembles the
global array; checkpoints are written collectively to the shared workdir.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES",
                  "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize()` when launched as one of several processes."""
    if os.environ.get("SLURM_NTASKS", "1") == "1" and not any(
            os.environ.get(k) for k in _MULTIHOST_ENV if k != "SLURM_NTASKS"):
        return
    jax.distributed.initialize()


def make_mesh(num_devices: int | None = None) -> Mesh:
    """1-D data-parallel mesh over the first `num_devices` devices (default: all)."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} devices, {len(devices)} available")
    # Auto axes: XLA propagates the batch split through the model (no explicit
    # per-op shardings needed in model/degradation code).
    return jax.make_mesh((n,), (DATA_AXIS,), devices=devices[:n],
                         axis_types=(AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n or batch_size % jax.process_count():
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of "
                         f"devices ({n}) and processes ({jax.process_count()})")


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local batch -> global arrays split over the 'data' axis."""
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def replicate(tree, mesh: Mesh):
    """Places a pytree (state, frozen networks) replicated on every device of `mesh`."""
    return jax.device_put(tree, replicated(mesh))


def jit_step(step_fn, mesh: Mesh):
    """`step(state, batch, frozen)` jitted with a donated, replicated state."""
    repl, data = replicated(mesh), data_sharding(mesh)
    return jax.jit(step_fn, in_shardings=(repl, data, repl), out_shardings=(repl, repl),
                   donate_argnums=0)
