"""Data-parallel sharding of the training step (one `jax.jit`, NamedSharding), and the
multi-process launch.

The batch is split along its first axis over a 1-D mesh axis 'data'; the train state
and the frozen networks are replicated, except the Real-ESRGAN training-pair pool
(DEGRADATION.md §2.3), which is split along its first axis like the batch (it is
`GAN_POOL_BATCHES` batches deep, ~1.1 GB at the official size: replicating it would put
the whole of it on every device). The state is donated, so an update happens in place.
The same program runs on 1 device, N devices or several hosts.

Multi-host (JAX's multi-controller runtime): the same command runs on every host;
`maybe_initialize_distributed()` calls `jax.distributed.initialize` when the environment
describes a multi-process launch (`JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` /
`JAX_PROCESS_ID`, or a cluster JAX detects itself: SLURM under `srun`, Cloud TPU, Open MPI,
Kubernetes). Each host reads its rows of the ONE global batch of each step
(`host_batch_rows`) and `global_batch` assembles the global array; checkpoints are
written collectively to the shared workdir.
"""

from __future__ import annotations

import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

logger = logging.getLogger(__name__)

DATA_AXIS = "data"
# The plain environment launch (read here and passed to jax.distributed.initialize).
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "JAX_LOCAL_DEVICE_IDS"
_LAUNCH_ENV = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
# SLURM variables that `srun` sets for each task (JAX's SlurmCluster needs all of them);
# an `salloc` shell or an ssh session on an allocated node has only some.
_SLURM_TASK_ENV = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                   "SLURM_LOCALID")
# Seconds without a heartbeat after which the JAX coordination service declares a
# process dead and ends the others (jax.distributed.initialize's default).
DEFAULT_HEARTBEAT_TIMEOUT_S = 100
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")


class LaunchError(ValueError):
    """The environment describes an inconsistent multi-process launch (one line)."""


def env_launch(environ=None, *, partial_ok: bool = False) -> dict | None:
    """The plain environment launch: `jax.distributed.initialize` kwargs, or None.

    Reads JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES (>= 1),
    JAX_PROCESS_ID (0 <= id < count) and optionally JAX_LOCAL_DEVICE_IDS (comma-separated
    ints). None when none of the three is set. Raises LaunchError (naming the variable)
    for a malformed value, and when only some of the three are set unless `partial_ok`
    (inside a cluster JAX detects, which fills in the others).
    """
    env = os.environ if environ is None else environ
    values = {k: env.get(k, "").strip() for k in _LAUNCH_ENV}
    present = [k for k, v in values.items() if v]
    if not present:
        return None
    missing = [k for k in _LAUNCH_ENV if not values[k]]
    if missing and not partial_ok:
        raise LaunchError(f"{', '.join(present)} set but not {', '.join(missing)}: a "
                          "multi-process launch needs all three (or none)")
    kwargs = {}
    if values[ENV_COORDINATOR]:
        address = values[ENV_COORDINATOR]
        match = _ADDRESS.match(address)
        if not match or not 0 < int(match.group(2)) < 65536:
            raise LaunchError(f"{ENV_COORDINATOR}={address!r} is not HOST:PORT "
                              "(e.g. 10.0.0.1:1234, port 1-65535)")
        kwargs["coordinator_address"] = address
    count = None
    if values[ENV_NUM_PROCESSES]:
        try:
            count = int(values[ENV_NUM_PROCESSES])
        except ValueError:
            count = 0
        if count < 1:
            raise LaunchError(f"{ENV_NUM_PROCESSES}={values[ENV_NUM_PROCESSES]!r} is not a "
                              "positive integer")
        kwargs["num_processes"] = count
    if values[ENV_PROCESS_ID]:
        try:
            pid = int(values[ENV_PROCESS_ID])
        except ValueError:
            pid = -1
        if pid < 0 or (count is not None and pid >= count):
            span = f"in [0, {count - 1}] ({ENV_NUM_PROCESSES}={count})" if count else ">= 0"
            raise LaunchError(f"{ENV_PROCESS_ID}={values[ENV_PROCESS_ID]!r} is not an "
                              f"integer {span}")
        kwargs["process_id"] = pid
    ids = env.get(ENV_LOCAL_DEVICE_IDS, "").strip()
    if ids:
        try:
            kwargs["local_device_ids"] = [int(i) for i in ids.split(",")]
        except ValueError:
            raise LaunchError(f"{ENV_LOCAL_DEVICE_IDS}={ids!r} is not a comma-separated "
                              "list of device ids (e.g. 0,1)") from None
    return kwargs


def detected_cluster():
    """The cluster environment JAX's own auto-detection would use (a
    `jax._src.clusters.ClusterEnv` subclass), or None.

    Uses the same rule as `jax.distributed.initialize()` (first non-opt-in environment
    whose `is_env_present()` is true), so SLURM counts only under `srun` (all of
    SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID set).
    """
    try:   # private module: the only place jax exposes its detection rule
        from jax._src import clusters
    except ImportError:   # pragma: no cover - a future jax without it
        return None
    for env in clusters.ClusterEnv._cluster_types:   # pylint: disable=protected-access
        if not env.opt_in_only_method and env.is_env_present():
            return env
    return None


def _partial_slurm_note(environ) -> str | None:
    """A line for a SLURM allocation entered without `srun` (salloc, ssh), else None."""
    present = [k for k in _SLURM_TASK_ENV if k in environ]
    if not present or len(present) == len(_SLURM_TASK_ENV):
        return None
    missing = [k for k in _SLURM_TASK_ENV if k not in environ]
    ntasks = environ.get("SLURM_NTASKS", "")
    hint = (f"; to train with {ntasks} processes launch with `srun` (e.g. `srun "
            f"--ntasks={ntasks} python scripts/train.py ...`)" if ntasks not in ("", "1")
            else "; launch with `srun` to train with several processes")
    return (f"SLURM variables {', '.join(present)} are set but not {', '.join(missing)} "
            f"(not started by srun): training as one process{hint}")


def maybe_initialize_distributed(heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
                                 environ=None) -> bool:
    """`jax.distributed.initialize` when the environment describes a multi-process launch.

    A cluster JAX detects itself (`detected_cluster`: SLURM under srun, Cloud TPU, Open
    MPI, Kubernetes) is left to JAX (its process count 1 -> no initialisation); JAX_*
    variables set there override the values it provides. Elsewhere the plain environment
    launch (`env_launch`, all three variables) is passed on. A partial SLURM
    environment (e.g. `salloc` without `srun`) trains as one process with one warning
    naming the variables. `heartbeat_timeout_s`: a process silent that long is declared
    dead and the coordination service ends the others (the bound on how long a lost peer
    can stall the run). Returns whether the runtime was initialised.

    Raises LaunchError for an inconsistent JAX_* environment.
    """
    env = os.environ if environ is None else environ
    cluster = detected_cluster()
    # Inside a detected cluster, JAX_* values may override some of what it provides.
    kwargs = env_launch(env, partial_ok=cluster is not None)
    if cluster is None:
        if kwargs is None:
            note = _partial_slurm_note(env)
            if note:
                logger.warning(note)
            return False
        if kwargs["num_processes"] == 1 and "local_device_ids" not in kwargs:
            return False
    elif kwargs is None and cluster.get_process_count() <= 1:
        logger.info("%s environment with one process: not initialising jax.distributed",
                    cluster.__name__)
        return False
    jax.distributed.initialize(**(kwargs or {}), heartbeat_timeout_seconds=int(heartbeat_timeout_s))
    logger.info("process %d of %d (%d local devices, %d in all)", jax.process_index(),
                jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


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
    if batch_size <= 0 or batch_size % n:
        raise ValueError(f"batch_size {batch_size} must be a positive multiple of the number "
                         f"of devices ({n}, over {jax.process_count()} processes)")


def host_batch_rows(batch_size: int, mesh: Mesh) -> list[int]:
    """Rows of the global batch (0..batch_size-1) this process feeds, in the order
    `jax.make_array_from_process_local_data` expects them (its devices' slices, sorted).

    With one process: all rows. With P processes over a mesh in `jax.devices()` order:
    the contiguous block `[p*B/P, (p+1)*B/P)`.
    """
    index_map = data_sharding(mesh).addressable_devices_indices_map((batch_size,))
    rows = sorted({r for idx in index_map.values() for r in range(*idx[0].indices(batch_size))})
    return rows


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local batch (the `host_batch_rows`) -> global arrays split over 'data'."""
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def state_shardings(state, mesh: Mesh):
    """NamedSharding per leaf of a TrainState: replicated, except the arrays of
    `state.pool` whose first axis splits evenly over the mesh, which are split along it
    like the batch (the pool's scalar counter stays replicated)."""
    n = mesh.devices.size
    repl = replicated(mesh)

    def pool_leaf(x):
        shape = np.shape(x)
        return (data_sharding(mesh) if len(shape) >= 1 and shape[0] % n == 0 and shape[0] > 0
                else repl)

    shardings = jax.tree.map(lambda _: repl, state)
    if getattr(state, "pool", None):
        shardings = shardings.replace(pool=jax.tree.map(pool_leaf, state.pool))
    return shardings


# Seconds the processes of a run may arrive apart at the start barrier.
START_BARRIER_TIMEOUT_S = 600


def wait_for_all_processes(name: str, timeout_s: int = START_BARRIER_TIMEOUT_S) -> None:
    """A barrier of the JAX coordination service (no device collective), for
    multi-process runs; nothing with one process.

    XLA's gloo CPU collectives give the processes 30 s to meet at the first collective
    (their context initialisation); processes that build and compile at different
    speeds (a loaded host) meet here first, with `timeout_s` to spare."""
    if jax.process_count() > 1:
        ocp.multihost.sync_global_processes(name, timeout=timeout_s,
                                            processes=set(range(jax.process_count())))


def place_state(state, mesh: Mesh):
    """Puts a (host or device) TrainState onto `mesh` with `state_shardings`."""
    return jax.device_put(state, state_shardings(state, mesh))


def replicate(tree, mesh: Mesh):
    """Places a pytree (frozen networks) replicated on every device of `mesh`."""
    return jax.device_put(tree, replicated(mesh))


def stop_votes(stop: bool, mesh: Mesh) -> jax.Array:
    """This process's vote to stop, as its rows of a global bool (devices,) array."""
    sharding = data_sharding(mesh)
    local = np.full((len(mesh.local_devices),), bool(stop))
    return jax.make_array_from_process_local_data(sharding, local, (mesh.devices.size,))


def jit_step(step_fn, mesh: Mesh, state=None, *, stop_votes: bool = False):
    """`step(state, batch, frozen) -> (state, metrics)` jitted over `mesh`, state donated.

    state: an example TrainState; its pool is then split over the mesh
      (`state_shardings`); None keeps the whole state replicated.
    stop_votes: the jitted step takes a 4th argument `votes` (`stop_votes(...)`) and
      returns `metrics['stop']`, True on every process when any process voted to stop:
      the all-reduce rides in the step's own program, so the processes agree on the
      step to stop at without another collective.
    """
    repl, data = replicated(mesh), data_sharding(mesh)
    state_sh = repl if state is None else state_shardings(state, mesh)
    if not stop_votes:
        return jax.jit(step_fn, in_shardings=(state_sh, data, repl),
                       out_shardings=(state_sh, repl), donate_argnums=0)

    def step(st, batch, frozen, votes):
        new_state, metrics = step_fn(st, batch, frozen)
        return new_state, {**metrics, "stop": jnp.any(votes)}

    return jax.jit(step, in_shardings=(state_sh, data, repl, data),
                   out_shardings=(state_sh, repl), donate_argnums=0)
