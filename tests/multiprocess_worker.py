"""Child process of tests/test_multiprocess.py: `scripts/train.py` as a user runs it, plus
test hooks read from the environment (never used outside the tests):

  KDSR_TEST_PROGRESS_DIR   each process writes `<dir>/p<process index>` = number of
                           batches it has started (so the test knows where it is)
  KDSR_TEST_BLOCK_AT       that batch (counted in this run) blocks forever before it is
                           fed to the step: the previous checkpoint is on disk, the
                           process sits there until the test kills it
  KDSR_TEST_STEP_DELAY_S   sleep that long before each batch (slow steps, so signals and
                           kills land mid-run)

Usage: python tests/multiprocess_worker.py --config ... --workdir ... (train.py's flags)
"""

import os
import runpy
import sys
import time

import jax

from kdsr_jax.train import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _install_hooks() -> None:
    progress_dir = os.environ.get("KDSR_TEST_PROGRESS_DIR", "")
    block_at = int(os.environ.get("KDSR_TEST_BLOCK_AT", "0"))
    delay = float(os.environ.get("KDSR_TEST_STEP_DELAY_S", "0"))
    real = sharding.global_batch
    calls = {"n": 0}

    def hooked(local, mesh):
        calls["n"] += 1
        if progress_dir:
            path = os.path.join(progress_dir, f"p{jax.process_index()}")
            with open(path + ".tmp", "w") as f:
                f.write(str(calls["n"]))
            os.replace(path + ".tmp", path)
        if block_at and calls["n"] == block_at:
            while True:
                time.sleep(60)
        if delay:
            time.sleep(delay)
        return real(local, mesh)

    sharding.global_batch = hooked


if __name__ == "__main__":
    _install_hooks()
    sys.argv = [os.path.join(REPO, "scripts", "train.py")] + sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
