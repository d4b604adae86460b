"""Safe replacement of files and directories, shared by the CLIs and the trainer.

One rule everywhere (scripts/convert.py, evaluate.py, upscale.py): an existing output
is replaced only when the user passes `--overwrite`, and the replacement is atomic —
the new content is written to a temporary sibling (same folder, hence same file system)
and swapped in with `os.replace` only after it is complete. A crash, a full disk or an
error while writing leaves the old output as it was (plus, at worst, a hidden
`.<name>.tmp-*` sibling that is removed on the way out).

Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from typing import BinaryIO, Callable, Iterator, Sequence


class OutputExistsError(FileExistsError):
    """An output exists and `--overwrite` was not given (one-line message)."""


def refuse_existing(paths: Sequence[str], overwrite: bool, flag: str = "--overwrite") -> None:
    """Raises OutputExistsError naming the first existing path of `paths` (and how many
    exist) unless `overwrite`."""
    if overwrite:
        return
    existing = [p for p in paths if os.path.lexists(p)]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputExistsError(f"{existing[0]} already exists{more}; pass {flag} to replace it")


def _sibling(path: str, kind: str) -> str:
    parent = os.path.dirname(os.path.abspath(path)) or "."
    name = os.path.basename(os.path.abspath(path))
    if kind == "dir":
        return tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    # Created with mode 0666 (unlike mkstemp's 0600), so the umask gives it the mode any
    # new file gets, which survives the rename.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(parent, f".{name}.tmp-{secrets.token_hex(6)}")
        try:
            os.close(os.open(tmp, flags, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: cannot create a temporary file")


def remove_path(path: str) -> None:
    """Removes a file, link or directory tree; missing paths are fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def replacing(path: str, *, directory: bool) -> Iterator[str]:
    """Yields a temporary sibling of `path` (a fresh empty directory, or an empty file
    when `directory=False`) to write the new content into; on normal exit it replaces
    `path` (a file is swapped in one `os.replace`; a directory by renaming the old one
    aside, renaming the new one in, then deleting the old one). On any exception the
    temporary sibling is deleted and `path` is untouched.

        with fileio.replacing("out/model", directory=True) as tmp:
            write_everything_into(tmp)
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = _sibling(path, "dir" if directory else "file")
    try:
        yield tmp
        if directory and os.path.isdir(path) and not os.path.islink(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.replace(path, os.path.join(old, "x"))
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(os.path.join(old, "x"), path)   # put the old one back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Writes a file through a temporary sibling: `write(f)` fills it (binary), then
    fsync and `os.replace`, so a crash or an error never leaves a partial file under
    `path` (an existing one stays as it was)."""
    with replacing(path, directory=False) as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str, text: str) -> None:
    """`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
