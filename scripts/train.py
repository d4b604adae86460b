#!/usr/bin/env python
"""Train one KDSR stage: `scripts/train.py --config CONFIG --workdir DIR [--config.x=y ...]`.

  python scripts/train.py --config configs/teacher.py --workdir runs/teacher \\
      --config.data.folder=/data/DF2K/HR
  python scripts/train.py --config configs/student.py --workdir runs/student \\
      --config.teacher=runs/teacher
  python scripts/train.py --config configs/teacher.py:demo --workdir /tmp/demo_t

Re-running the same command on the same workdir resumes exactly from the latest
checkpoint. SIGTERM / Ctrl-C: the current step finishes, a checkpoint is written, exit 0.
Multi-host: run the same command on every host (see kdsr_jax.train.sharding).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file[:variants].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, model.json.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from kdsr_jax.train import loop, sharding

    logging.set_verbosity(logging.INFO)
    try:
        sharding.maybe_initialize_distributed()
        loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ValueError, loop.NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
