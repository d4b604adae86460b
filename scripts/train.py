#!/usr/bin/env python
"""Train one KDSR stage: `scripts/train.py --config CONFIG --workdir DIR [--config.x=y ...]`.

  python scripts/train.py --config configs/teacher.py --workdir runs/teacher \\
      --config.data.folder=/data/DF2K/HR
  python scripts/train.py --config configs/student.py --workdir runs/student \\
      --config.teacher=runs/teacher
  python scripts/train.py --config configs/teacher.py:demo --workdir /tmp/demo_t

Re-running the same command on the same workdir resumes exactly from the latest
checkpoint (a damaged newest step is skipped with a warning). A workdir belongs to one
run: another model or config, a converted model, a second concurrent run (lock) or a
run already past --config.total_steps is refused before anything is written.
SIGTERM / Ctrl-C: the current step finishes, a checkpoint is written, exit 0.
Library logs (orbax, jax) are kept at WARNING; --verbosity=0 shows their INFO lines.
Errors print one `error: ...` line and exit 1.
Multi-host: run the same command on every host (README "Multi-host training"):
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, or a cluster JAX detects
(SLURM under srun, Cloud TPU, Open MPI, Kubernetes).
"""

import logging as std_logging
import os
import re
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

_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)" instead of "([^"]+)"')


def _config_field_error(exc: Exception, argv) -> str:
    """One line for ml_collections' unknown-field error (raised while parsing
    `--config.<field>=...`, with a 'Did you mean' hint buried in a repr)."""
    text = str(exc).encode().decode("unicode_escape", errors="replace")
    m = _DID_YOU_MEAN.search(text)
    bad = m.group(2) if m else (re.findall(r"'([^'\\]+)'", text) or ["?"])[0]
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
                 and re.search(rf"[.]{re.escape(bad)}(=|$|[.])", a.split("=")[0])), None)
    hint = f'; did you mean "{m.group(1)}"?' if m else ""
    return f"unknown config field {bad!r}{f' in {flag}' if flag else ''}{hint}"


def parse_flags(argv):
    """absl flag parsing with one-line errors (no traceback, no usage dump)."""
    for i, a in enumerate(argv):
        value = (a.split("=", 1)[1] if a.startswith("--config=") else
                 argv[i + 1] if a == "--config" and i + 1 < len(argv) else None)
        if value is not None and not os.path.isfile(value.split(":")[0]):
            print(f"error: --config {value}: no such config file", file=sys.stderr)
            sys.exit(1)
    try:
        return flags.FLAGS(argv)
    except SystemExit as e:     # absl's --help/--helpfull exit with status 1
        if e.code == 1 and any(a.startswith(("--help", "-h", "-?")) for a in argv[1:]):
            sys.exit(0)
        raise
    except flags.Error as e:
        msg = str(e)
    except (AttributeError, KeyError) as e:     # ml_collections: unknown config field
        msg = _config_field_error(e, argv)
    except (ValueError, TypeError) as e:        # config file: bad variant, bad value
        msg = str(e)
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    if "Traceback (most recent call last):" in lines:   # an error inside the config file
        head = lines[0].split(": Error whilst")[0]
        lines = [f"{head}: {lines[-1]}"]
    print(f"error: {lines[0] if lines else msg} (see --help)", file=sys.stderr)
    sys.exit(1)


def _set_log_levels() -> None:
    """Library chatter (orbax's ~60 INFO lines per checkpoint, jax's backend probing)
    at WARNING unless --verbosity was given; our own progress stays at INFO."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
        std_logging.getLogger("kdsr_jax").setLevel(std_logging.INFO)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from kdsr_jax.train import loop, sharding

    _set_log_levels()
    try:
        sharding.maybe_initialize_distributed(heartbeat_timeout_s=_HEARTBEAT.value)
        state = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
        print(f"{_WORKDIR.value}: at step {int(state.step)} of {_CONFIG.value.total_steps}")
    except loop.PeerLostError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        # Skip jax.distributed's exit barrier: the lost peer can never reach it (it
        # would end this process with an abort and a stack dump after the heartbeat
        # timeout). Checkpoints are already closed by the training loop.
        os._exit(1)
    except (ValueError, OSError, loop.NonFiniteLossError) as e:
        from kdsr_jax import cli

        cli.print_error(e)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
