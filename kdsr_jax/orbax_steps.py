"""Orbax checkpoint steps under faults: damaged steps, full disks, one-line errors.

* `verify_step(step_dir)` reads every stored value of every OCDBT item of a step
  synchronously (tensorstore KvStore, no asyncio): a truncated or missing data file, a
  missing manifest or an emptied step directory is found *before* orbax restores it.
  (An orbax restore of such a step fails inside its asyncio loop and then prints
  hundreds of "Event loop is closed" / "Exception ignored in coroutine" tracebacks from
  tensorstore's threads, long after the exception.)
* `restore_newest_readable(...)` restores the newest step that verifies and restores,
  with one warning naming the damaged newer steps; `NoReadableCheckpointError` (one
  line) when none is readable.
* `contained(what)`: runs an orbax call with its stderr noise captured; a failure
  (a full disk, a read-only folder) becomes one `CheckpointIOError` line.

Used by `kdsr_jax.checkpoints.load_workdir`, the trainer (`kdsr_jax.train.loop`) and
`kdsr_jax.convert.save_converted`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
import tempfile
from typing import Any, Callable, Iterator, Sequence

logger = logging.getLogger(__name__)

OCDBT_MANIFEST = "manifest.ocdbt"
CHECKPOINT_METADATA = "_CHECKPOINT_METADATA"


class CheckpointIOError(OSError):
    """Writing or reading a checkpoint failed (disk full, permissions...); one line."""


class NoReadableCheckpointError(ValueError):
    """Every checkpoint step of a directory is damaged (one line)."""


class DamagedStepError(ValueError):
    """One step directory is incomplete or damaged."""


# tensorstore: '... Failed to write 298112 bytes to file 4: File too large [os_error_code='27']'
_OS_ERROR = re.compile(r"os_error_code='?(\d+)")


def _one_line(exc: BaseException) -> str:
    """The OS reason inside a tensorstore message ('No space left on device'), else the
    first non-blank line of `exc` (at most 300 characters)."""
    m = _OS_ERROR.search(str(exc))
    if m:
        return os.strerror(int(m.group(1)))
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    for line in str(exc).splitlines():
        if line.strip():
            return " ".join(line.split())[:300]
    return type(exc).__name__


class _DropOrphanedFutures(logging.Filter):
    """Drops asyncio's 'exception was never retrieved' reports: after a failed orbax
    call, its abandoned write/read futures are garbage-collected later, each logging
    the error we already reported (with a traceback) at ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in str(record.msg)


_ORPHAN_FILTER = _DropOrphanedFutures()


def _silence_orphaned_futures() -> None:
    """Installs the filter on the 'asyncio' logger (once) after an orbax failure was
    turned into our own one-line error."""
    asyncio_logger = logging.getLogger("asyncio")
    if _ORPHAN_FILTER not in asyncio_logger.filters:
        asyncio_logger.addFilter(_ORPHAN_FILTER)


@contextlib.contextmanager
def _captured_stderr() -> Iterator[Any]:
    """fd-level capture of stderr (C++ and Python writers alike) into a temporary file;
    unraisable-exception reports are dropped and a GC pass runs inside the window, so
    the coroutines of a failed orbax call are finalised silently."""
    sys.stderr.flush()
    saved_fd = os.dup(2)
    tmp = tempfile.TemporaryFile()
    os.dup2(tmp.fileno(), 2)
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        yield tmp
    finally:
        gc.collect()
        sys.unraisablehook = hook
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)


@contextlib.contextmanager
def contained(what: str) -> Iterator[None]:
    """Runs the body with stderr captured. Success: the captured text is written to
    stderr unchanged. Failure (any Exception): the captured text is dropped and
    `CheckpointIOError("<what>: <first line of the error>")` is raised (OSError, so
    the CLIs print it as one line). KeyboardInterrupt passes through."""
    failed = None
    with _captured_stderr() as tmp:
        try:
            yield
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
            failed = e
    if failed is not None:
        _silence_orphaned_futures()
        raise CheckpointIOError(f"{what}: {_one_line(failed)}") from None
    tmp.seek(0)
    text = tmp.read()
    if text:
        sys.stderr.write(text.decode("utf-8", "replace"))


def open_manager(factory: Callable[[], Any]) -> Any:
    """`factory()` (an `ocp.CheckpointManager(...)`) without orbax's per-step warning
    about a missing `_CHECKPOINT_METADATA` (a damaged step: `restore_newest_readable`
    names it once); any other output is kept."""
    with _captured_stderr() as noise:
        mgr = factory()
    noise.seek(0)
    kept = [ln for ln in noise.read().decode("utf-8", "replace").splitlines(keepends=True)
            if "Metadata file does not exist" not in ln]
    if kept:
        sys.stderr.write("".join(kept))
    return mgr


def verify_step(step_dir: str, items: Sequence[str] = ()) -> None:
    """Raises DamagedStepError when the orbax step directory `step_dir` cannot be
    fully read: `items` (e.g. ("state",)) must exist, and every OCDBT item (a subfolder
    with `manifest.ocdbt`) must list at least one key and read every value in full
    (non-empty)."""
    import tensorstore as ts

    if not os.path.isdir(step_dir):
        raise DamagedStepError(f"{step_dir} is not a directory")
    entries = os.listdir(step_dir)
    if not entries:
        raise DamagedStepError("empty step directory")
    for item in items:
        if not os.path.isdir(os.path.join(step_dir, item)):
            raise DamagedStepError(f"item {item!r} is missing")
    for item in sorted(entries):
        root = os.path.join(step_dir, item)
        if not os.path.isdir(root):
            continue
        if not os.path.isfile(os.path.join(root, OCDBT_MANIFEST)):
            if item in items and not os.listdir(root):
                raise DamagedStepError(f"item {item!r} is empty")
            continue
        try:
            kv = ts.KvStore.open({"driver": "ocdbt",
                                  "base": f"file://{os.path.abspath(root)}/"}).result()
            keys = kv.list().result()
            if not keys:
                raise DamagedStepError(f"item {item!r} holds no arrays")
            for key in keys:
                # A deleted data file reads as an empty value; real chunks and zarr
                # metadata are never empty.
                got = kv.read(key).result()
                if got.state != "value" or not len(got.value):
                    raise DamagedStepError(f"item {item!r}: value {key.decode(errors='replace')!r} "
                                           "is missing")
        except DamagedStepError:
            raise
        except Exception as e:  # noqa: BLE001 - tensorstore raises ValueError/OSError/...
            raise DamagedStepError(f"item {item!r}: {_one_line(e)}") from None


def restore_newest_readable(steps: Sequence[int], step_dir: Callable[[int], str],
                            restore: Callable[[int], Any], where: str,
                            items: Sequence[str] = ()):
    """(step, restored, damaged) for the newest of `steps` that verifies and restores;
    `damaged` = [(step, reason)] of the newer steps skipped (a warning names them).
    (None, None, []) when `steps` is empty. Raises NoReadableCheckpointError when every
    step is damaged."""
    damaged: list[tuple[int, str]] = []
    for step in sorted(steps, reverse=True):
        try:
            verify_step(step_dir(step), items)
            with _captured_stderr() as noise:
                restored = restore(step)
        except DamagedStepError as e:
            damaged.append((step, str(e)))
            continue
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types
            _silence_orphaned_futures()
            damaged.append((step, _one_line(e)))
            continue
        noise.seek(0)
        text = noise.read()
        if text:    # a clean restore's own messages are kept
            sys.stderr.write(text.decode("utf-8", "replace"))
        if damaged:
            logger.warning("%s: checkpoint step %s is damaged (%s); using step %d instead",
                           where, ", ".join(str(s) for s, _ in damaged), damaged[0][1], step)
        return step, restored, damaged
    if damaged:
        raise NoReadableCheckpointError(
            f"{where}: no readable checkpoint; damaged step(s) "
            f"{', '.join(str(s) for s, _ in damaged)} (newest: {damaged[0][1]})")
    return None, None, []
