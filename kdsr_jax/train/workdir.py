"""The training workdir before anything is written to it: pre-flight checks and a lock.

`prepare(config, workdir, spec)` (a context manager, used by
`kdsr_jax.train.loop.train_and_evaluate`) runs, in this order, before the trainer
writes a byte:

1. the path: not empty, not a file, a writable directory (or creatable);
2. what is there: nothing, an empty directory, or a training workdir of *this* run —
   `model.json` equal to the new ModelSpec and `config.json` equal to the new config
   except for the fields a resumed run may change (`RESUMABLE`). Anything else is
   refused in one line naming the differing fields (e.g. `model.preset ('KDSRs-M' ->
   'KDSRs-L')`), or naming what the folder holds (a converted model, other files);
3. the saved step: a run already past `total_steps` is refused ("already at step N"),
   leaving the workdir as it is;
4. the lock (`.lock`, an `fcntl.flock` held for the whole run, with the holder's pid
   and host in the file): a second run on the same workdir refuses to start, naming
   the holder; a lock left by a killed run is not held by anyone and is taken over
   with a warning naming the dead pid.

On an exception inside the `with` block, a workdir this call created (or found empty)
that still holds no checkpoint is removed again: a failed start leaves no half-made
workdir that would later look like a run. Only process 0 writes, locks and cleans.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import tempfile
from typing import Iterator

import jax

from kdsr_jax import fileio
from kdsr_jax.checkpoints import CHECKPOINT_DIR, CONFIG_JSON
from kdsr_jax.models.spec import MODEL_JSON, ModelSpec

logger = logging.getLogger(__name__)

TB_DIR = "tb"
LOCK_FILE = ".lock"
DAMAGED_DIR = "checkpoints_damaged"     # damaged steps moved aside on resume
OWN_ENTRIES = frozenset({CHECKPOINT_DIR, MODEL_JSON, CONFIG_JSON, TB_DIR, LOCK_FILE,
                         DAMAGED_DIR})
# Config fields a resumed run may change (cadence, paths, evaluation, compute dtype);
# any other difference means another run. A trailing '.' matches a whole subtree.
RESUMABLE = ("total_steps", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
             "eval_every_steps", "eval.", "teacher", "student", "perceptual.vgg_path",
             "model.dtype", "model.remat", "model.dynconv", "data.folder", "data.path",
             "data.tfds_data_dir",
             "data.worker_threads", "data.worker_processes", "data.prefetch_batches",
             "data.cache_mb")
# Data sources that give the same batches: a prepared set is its folder, decoded once
# (`kdsr_jax.data.prepared`), so a run may switch between the two.
SAME_BATCHES_SOURCE = {"prepared": "folder"}
# ModelSpec fields that do not change the weights (implementation choices).
SPEC_RESUMABLE = ("dynconv",)


class WorkdirError(ValueError):
    """The workdir cannot be used for this run (one-line message)."""


class WorkdirBusyError(WorkdirError):
    """Another live process holds the workdir's lock."""


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _resumable(name: str) -> bool:
    return any(name == r or (r.endswith(".") and name.startswith(r)) for r in RESUMABLE)


def _by_batches(config: dict) -> dict:
    """`config` with `data.source` named by the batches it gives (SAME_BATCHES_SOURCE)."""
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict) or data.get("source") not in SAME_BATCHES_SOURCE:
        return config
    return {**config, "data": {**data, "source": SAME_BATCHES_SOURCE[data["source"]]}}


def _differences(old: dict, new: dict, allowed) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    out = []
    # A field only one side has (added or dropped by a newer version of the code) is
    # not a difference of the run.
    for name in sorted(set(a) & set(b)):
        if allowed(name) or a[name] == b[name]:
            continue
        out.append(f"{name} ({a[name]!r} -> {b[name]!r})")
    return out


def saved_steps(workdir: str) -> list[int]:
    """Step numbers of the finished orbax steps in `workdir/checkpoints` (sorted)."""
    root = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(root):
        return []
    return sorted(int(n) for n in os.listdir(root)
                  if n.isdigit() and os.path.isdir(os.path.join(root, n)))


def _read_json(path: str, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise WorkdirError(f"{path}: cannot read the saved {what} ({e}); this is not a "
                           "usable training workdir") from None


def check_path(workdir: str) -> None:
    """The workdir path itself: given, not a file, writable (or its parent is)."""
    if not workdir or not str(workdir).strip():
        raise WorkdirError("--workdir is empty: give a directory for checkpoints and logs")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} is a file, not a directory")
    probe_dir = workdir
    while not os.path.exists(probe_dir):        # the nearest existing ancestor
        parent = os.path.dirname(os.path.abspath(probe_dir))
        if parent == os.path.abspath(probe_dir):
            break
        probe_dir = parent
    if not os.path.isdir(probe_dir):
        raise WorkdirError(f"cannot create --workdir {workdir}: {probe_dir} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise WorkdirError(f"cannot write to --workdir {workdir} ({probe_dir}: "
                           f"{e.strerror or e})") from None


def check_contents(config, workdir: str, spec: ModelSpec) -> int | None:
    """Checks what `workdir` holds against this run; returns the newest saved step
    (None: nothing saved yet). Raises WorkdirError; never writes."""
    if not os.path.isdir(workdir):
        return None
    entries = set(os.listdir(workdir))
    if not entries:
        return None
    if "variables" in entries or (MODEL_JSON in entries and CONFIG_JSON not in entries
                                  and CHECKPOINT_DIR not in entries):
        raise WorkdirError(f"{workdir} holds a converted model (kdsr_jax.convert), not a "
                           "training workdir; choose another --workdir")
    foreign = sorted(entries - OWN_ENTRIES)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise WorkdirError(f"{workdir} is not a training workdir (it holds {shown}); "
                           "choose a new or empty --workdir")
    if MODEL_JSON in entries:
        saved = _read_json(os.path.join(workdir, MODEL_JSON), "model spec")
        saved = saved.get("spec", saved) if isinstance(saved, dict) else saved
        diff = _differences(saved, spec.to_dict(), lambda n: n in SPEC_RESUMABLE)
        if diff:
            raise WorkdirError(f"{workdir} trains another model: {'; '.join(diff)}; use a "
                               "new --workdir, or the config it was started with")
    if CONFIG_JSON in entries:
        saved = _read_json(os.path.join(workdir, CONFIG_JSON), "config")
        new = json.loads(config.to_json_best_effort())
        diff = _differences(_by_batches(saved), _by_batches(new), _resumable)
        if diff:
            raise WorkdirError(f"{workdir} was started with another config: "
                               f"{'; '.join(diff)}; use a new --workdir, or the same config")
    steps = saved_steps(workdir)
    newest = steps[-1] if steps else None
    if newest is not None and (MODEL_JSON not in entries or CONFIG_JSON not in entries):
        raise WorkdirError(f"{workdir} has checkpoints but no {MODEL_JSON}/{CONFIG_JSON}; "
                           "it was not written by this trainer")
    if newest is not None and config.total_steps < newest:
        raise WorkdirError(f"{workdir} is already at step {newest}, past --config.total_steps="
                           f"{config.total_steps}; nothing to do (the workdir is left as it is)")
    return newest


class WorkdirLock:
    """An exclusive `fcntl.flock` on `<workdir>/.lock` for the life of a run; the file
    records 'pid host start-time' of the holder for the refusal message."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_fd(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise WorkdirBusyError(
                    f"{self.workdir} is in use by another training run ({_describe(holder)}); "
                    "wait for it to finish or choose another --workdir") from None
            # The holder may have removed the file between our open and flock: retry.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = _read_fd(fd)
        if stale:
            logger.warning("%s: taking over the lock left by %s, which is no longer running",
                           self.workdir, _describe(stale))
        os.ftruncate(fd, 0)
        start = datetime.datetime.now().isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {start}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _describe(holder: str) -> str:
    return holder or "a process that has not written its pid yet"


def _remove_new_workdir(workdir: str, created: bool) -> None:
    """After a failed start: removes what the trainer wrote, if nothing was saved."""
    if saved_steps(workdir):
        return
    for name in OWN_ENTRIES - {LOCK_FILE}:
        fileio.remove_path(os.path.join(workdir, name))
    if created:
        with contextlib.suppress(OSError):
            os.rmdir(workdir)


@contextlib.contextmanager
def prepare(config, workdir: str, spec: ModelSpec) -> Iterator[int | None]:
    """Pre-flight checks, creation and lock of `workdir` (see the module docstring);
    yields the newest saved step (None for a new run)."""
    check_path(workdir)
    if jax.process_index() != 0:
        # Process 0 checks, writes and locks; the others must not judge the workdir
        # while it writes there (a half-written pair of run files, temporary siblings).
        # If process 0 refuses, it exits and the others stop at the start barrier.
        yield None
        return
    newest = check_contents(config, workdir, spec)
    existed = os.path.isdir(workdir)
    fresh = not existed or not os.listdir(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create --workdir {workdir}: {e.strerror or e}") from None
    lock = WorkdirLock(workdir)
    try:
        lock.acquire()
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                os.rmdir(workdir)
        raise
    try:
        # Checked again under the lock: another run may have started in between.
        newest = check_contents(config, workdir, spec)
        yield newest
    except BaseException:
        if fresh:
            _remove_new_workdir(workdir, created=not existed)
        raise
    finally:
        lock.release()
        if fresh and not existed and not saved_steps(workdir):
            with contextlib.suppress(OSError):
                os.rmdir(workdir)       # only when left empty


def write_run_files(workdir: str, spec: ModelSpec, config) -> None:
    """model.json and config.json, each atomically (process 0 only)."""
    if jax.process_index() != 0:
        return
    fileio.atomic_write_text(os.path.join(workdir, MODEL_JSON), spec.to_json())
    fileio.atomic_write_text(os.path.join(workdir, CONFIG_JSON),
                             config.to_json_best_effort(indent=2))
