#!/usr/bin/env python
"""Train one KDSR stage: `scripts/train.py --config CONFIG --workdir DIR [--config.x=y ...]`.

  python scripts/train.py --config configs/teacher.py --workdir runs/teacher \\
      --config.data.folder=/data/DF2K/HR
  python scripts/train.py --config configs/student.py --workdir runs/student \\
      --config.teacher=runs/teacher
  python scripts/train.py --config configs/teacher.py:demo --workdir /tmp/demo_t

Re-running the same command on the same workdir resumes exactly from the latest
checkpoint. SIGTERM / Ctrl-C: the current step finishes, a checkpoint is written, exit 0.
Multi-host: run the same command on every host (README "Multi-host training"):
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, or a cluster JAX detects
(SLURM under srun, Cloud TPU, Open MPI, Kubernetes).
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file[:variants].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, model.json.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 100,
    "Multi-process runs: seconds without a heartbeat after which the JAX coordination "
    "service declares a process dead and ends the others.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from kdsr_jax.train import loop, sharding

    logging.set_verbosity(logging.INFO)
    try:
        sharding.maybe_initialize_distributed(heartbeat_timeout_s=_HEARTBEAT.value)
        loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except loop.PeerLostError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        # Skip jax.distributed's exit barrier: the lost peer can never reach it (it
        # would end this process with an abort and a stack dump after the heartbeat
        # timeout). Checkpoints are already closed by the training loop.
        os._exit(1)
    except (ValueError, loop.NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
