"""Official KDSR weights by name, URL or Google Drive link, downloaded once and cached.

    from kdsr_jax import hub
    model, variables = hub.load("KDSRs-M-iso-x4")          # a registry name
    model, variables = hub.load("https://host/KDSRsM_iso_x4.pt")
    model, variables = hub.load("https://drive.google.com/file/d/<id>/view")
    model, variables = hub.load("gdrive:<file id>")          # or a bare Drive file id
    model, variables = hub.load("gdrive:<folder id>/KDSRsM_iso_x4.pt")
    print(hub.list_models())

`kdsr_jax.checkpoints.load` (and so every `--checkpoint` flag and the `teacher` /
`student` config fields) accepts the same strings.

Registry: the official README links Google Drive folders for the classic models
(`CLASSIC_FOLDER`), the GAN models (`GAN_FOLDER`), all models (`ALL_FOLDER`) and
KDSR-GANV2 as a single file; each entry names its Drive folder (or file) id and the file
name inside the folder (file names as the official test scripts and ymls expect them:
`test_iso_KDSRsMx4.sh`, `test_KDSRGAN*.yml`). The real Drive download could not be run
where this was written (no network): the entries carry no sha256 yet, so those files
are verified by strict conversion only; an entry that knows its sha256 is checked.

Cache (`cache_dir()`): `$KDSR_JAX_CACHE`, else `$XDG_CACHE_HOME/kdsr-jax`, else
`~/.cache/kdsr-jax`. Per source, `<cache>/<key>/<file>` holds the downloaded weights and
`<cache>/<key>/converted/` the converted model (`kdsr_jax.convert.save_converted`), so a
second load reads the converted model and touches no network. Downloads are written to
a temporary file in the same folder and renamed only once complete and verified
(Content-Length, sha256 when known, not an HTML page), so Ctrl-C or a dropped
connection never leaves a file that later passes as complete; the converted model is
likewise written to a temporary sibling and renamed.

HTTP(S) downloads use `requests` with a `tqdm` progress bar (both already installed as
`gdown`'s own dependencies, so no further library is needed; `requests` gives streamed
bodies, status codes and connection errors as distinct exceptions, which the one-line
errors below need). Google Drive goes through `gdown`, which handles Drive's
confirmation pages and folder listings.

Errors are `HubError` (a ValueError, one line): no network, HTTP errors such as 404,
Google Drive quota / permission pages, an HTML page instead of a file, a truncated
download, a sha256 mismatch, an unknown name, or a downloaded file that is not a KDSR
checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import shutil
import sys
import tempfile
import urllib.parse

import requests
from tqdm import tqdm

from kdsr_jax import convert
from kdsr_jax.convert import torch_io

CACHE_ENV = "KDSR_JAX_CACHE"
CONVERTED_DIR = "converted"
# Google Drive folders and file linked from the official KDSR README.
CLASSIC_FOLDER = "113NBvfcrCedvend96KqDiRYVy3N8yprl"
GAN_FOLDER = "1QlOz4F9Mtp9DFXoaHYbnMnRSonR9YFJA"
ALL_FOLDER = "1_LyZDLu5dNIBaCSu7oB9w9d1SPf1pm8c"
GANV2_FILE = "1plvMt7VrOY9YLbWrpchOzi6t1wcqkzBl"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = (15, 60)           # (connect, between bytes) for requests
_DRIVE_ID = r"[A-Za-z0-9_-]{25,}"
# A bare id (no gdrive: prefix) only in Drive's own shapes, so that a mistyped local name
# is never taken for one: 33 characters starting with 1 (today's ids), or 28 starting
# with 0B (older ones).
_BARE_DRIVE_ID = r"1[A-Za-z0-9_-]{32}|0B[A-Za-z0-9_-]{26}"


class HubError(ValueError):
    """A name / URL / Drive link cannot be resolved or downloaded (one-line message)."""


@dataclasses.dataclass(frozen=True)
class Release:
    """One official release model: where it lives and what it is."""

    name: str
    description: str
    filename: str                     # file name inside the Drive folder / cache
    drive_folder: str | None = None   # Drive folder id holding `filename`
    drive_file: str | None = None     # or the Drive file id itself
    url: str | None = None            # or a direct http(s) URL
    sha256: str | None = None         # checked when known

    @property
    def source(self) -> str:
        if self.url:
            return self.url
        if self.drive_file:
            return f"gdrive:{self.drive_file}"
        return f"gdrive:{self.drive_folder}/{self.filename}"


# Names follow the paper (Tables 1-3); the file names are the official ones.
REGISTRY: dict[str, Release] = {r.name: r for r in (
    Release("KDSRs-M-iso-x4", "classic student, C64/N53/R9, isotropic Gaussian blur (Table 1)",
            "KDSRsM_iso_x4.pt", drive_folder=CLASSIC_FOLDER),
    Release("KDSRs-L-iso-x4", "classic student, C128/N28/R5, isotropic Gaussian blur (Table 1)",
            "KDSRsL_iso_x4.pt", drive_folder=CLASSIC_FOLDER),
    Release("KDSRs-M-aniso-x4", "classic student, C64/N53/R9, anisotropic blur + noise "
            "(Table 2)", "KDSRsM_anisonoise_x4.pt", drive_folder=CLASSIC_FOLDER),
    Release("KDSR-GAN-x4", "Real-ESRGAN-setting student, C128/N42/R6 (Table 3)",
            "KDSRS-GAN.pth", drive_folder=GAN_FOLDER),
    Release("KDSR-GANV2-x4", "KDSR-GAN V2 (Aug 2023, tuned for real-world photos)",
            "KDSRS-GANV2.pth", drive_file=GANV2_FILE),
)}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_release(name: str) -> Release | None:
    """The registry entry for `name`, ignoring case and separators ('kdsrs_m iso x4')."""
    wanted = _norm(name)
    return next((r for r in REGISTRY.values() if _norm(r.name) == wanted), None)


def list_models() -> str:
    """A table of the registry: name, description, source (what `--list-models` prints)."""
    width = max(len(n) for n in REGISTRY)
    lines = [f"{'name'.ljust(width)}  description / source"]
    for r in REGISTRY.values():
        lines.append(f"{r.name.ljust(width)}  {r.description}")
        lines.append(f"{''.ljust(width)}  {r.source} ({r.filename})")
    return "\n".join(lines)


def cache_dir() -> pathlib.Path:
    """`$KDSR_JAX_CACHE`, else `$XDG_CACHE_HOME/kdsr-jax`, else `~/.cache/kdsr-jax`."""
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "kdsr-jax"


# ---------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class Source:
    """What to fetch: kind 'url', 'gdrive_file' or 'gdrive_folder'."""

    ref: str                 # what the user wrote
    kind: str
    location: str            # URL, Drive file id, or Drive folder id
    filename: str            # cached file name (and the file to pick inside a folder)
    key: str                 # cache sub-folder
    sha256: str | None = None


def _drive_ids(url: str) -> tuple[str | None, str | None]:
    """(file id, folder id) of a drive.google.com / docs.google.com link."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in ("drive.google.com", "docs.google.com"):
        return None, None
    if m := re.search(rf"/drive/(?:u/\d+/)?folders/({_DRIVE_ID})", parts.path):
        return None, m.group(1)
    if m := re.search(rf"/file/d/({_DRIVE_ID})", parts.path):
        return m.group(1), None
    ids = urllib.parse.parse_qs(parts.query).get("id")
    return (ids[0], None) if ids else (None, None)


def _safe_name(name: str, default: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(name))
    return name if name.strip("._") else default


def parse(ref: str) -> Source | None:
    """The Source a string names, or None if it is none of: a registry name, an http(s)
    URL, a Google Drive link, `gdrive:<file id>`, `gdrive:<folder id>/<file name>`, or a
    bare Drive file id."""
    ref = str(ref).strip()
    release = find_release(ref)
    if release is not None:
        if release.url:
            return Source(ref, "url", release.url, release.filename, release.name,
                          release.sha256)
        if release.drive_file:
            return Source(ref, "gdrive_file", release.drive_file, release.filename,
                          release.name, release.sha256)
        return Source(ref, "gdrive_folder", release.drive_folder, release.filename,
                      release.name, release.sha256)
    if m := re.fullmatch(rf"gdrive:({_DRIVE_ID})(?:/(.+))?", ref):
        return _drive_source(ref, m.group(1) if m.group(2) is None else None,
                             m.group(1) if m.group(2) else None, m.group(2))
    if re.fullmatch(_BARE_DRIVE_ID, ref) and not os.path.exists(ref):
        return _drive_source(ref, ref, None, None)
    if re.match(r"https?://", ref, re.IGNORECASE):
        file_id, folder_id = _drive_ids(ref)
        if file_id or folder_id:
            name = urllib.parse.unquote(urllib.parse.urlsplit(ref).fragment) or None
            return _drive_source(ref, file_id, folder_id, name)
        digest = hashlib.sha256(ref.encode()).hexdigest()[:16]
        name = _safe_name(urllib.parse.unquote(urllib.parse.urlsplit(ref).path), "weights.pth")
        return Source(ref, "url", ref, name, f"url-{digest}")
    return None


def _drive_source(ref, file_id, folder_id, name) -> Source:
    if file_id:
        return Source(ref, "gdrive_file", file_id, _safe_name(name or "", "weights"),
                      f"gdrive-{file_id}")
    return Source(ref, "gdrive_folder", folder_id, _safe_name(name or "", ""),
                  f"gdrive-{folder_id}-{_safe_name(name or '', 'any')}")


def is_remote(ref) -> bool:
    """True when `ref` names something `load` fetches (and is not a local path)."""
    return not os.path.exists(os.fspath(ref)) and parse(os.fspath(ref)) is not None


# ---------------------------------------------------------------------------- loading


def cached_weights(ref: str) -> pathlib.Path | None:
    """The cached weight file of `ref` if it was downloaded before, else None."""
    src = parse(ref)
    if src is None or not src.filename:
        return None
    path = cache_dir() / src.key / src.filename
    return path if path.is_file() else None


def fetch(ref: str, progress: bool = True) -> pathlib.Path:
    """Path of the weight file `ref` names, downloading it into the cache if needed.
    A cached file is used as it is (no network)."""
    src = parse(ref)
    if src is None:
        raise HubError(f"{ref}: not a registry name, URL or Google Drive link "
                       f"(known names: {', '.join(REGISTRY)})")
    folder = cache_dir() / src.key
    if src.filename and (folder / src.filename).is_file():
        return folder / src.filename
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HubError(f"cannot create the cache folder {folder} ({e.strerror or e}); "
                       f"set {CACHE_ENV} to a writable folder") from None
    if src.kind == "url":
        return _download_url(src, folder, progress)
    return _download_drive(src, folder, progress)


def load(ref: str, progress: bool = True):
    """(model, variables) for a registry name, URL or Drive link: the cached converted
    model when there is one (offline), else the cached or downloaded weights, converted
    strictly (`convert.from_torch`) and cached as a converted model."""
    src = parse(ref)
    if src is None:
        raise HubError(f"{ref}: not a registry name, URL or Google Drive link "
                       f"(known names: {', '.join(REGISTRY)})")
    converted = cache_dir() / src.key / CONVERTED_DIR
    if (converted / convert.MODEL_JSON).is_file():
        try:
            return convert.load_converted(converted)
        except ValueError as e:   # damaged cache entry: convert the weights again
            print(f"warning: re-converting {ref}: cached model unusable ({e})",
                  file=sys.stderr)
            shutil.rmtree(converted, ignore_errors=True)
    weights = fetch(ref, progress)
    try:
        model, variables = convert.from_torch(weights)
    except ValueError as e:
        weights.unlink(missing_ok=True)   # never keep a file that failed verification
        raise HubError(f"{ref}: the downloaded file is not a KDSR checkpoint "
                       f"({torch_io._one_line(e)})") from None
    _save_converted_atomic(converted, model.spec, variables)
    return model, variables


def _save_converted_atomic(target: pathlib.Path, spec, variables) -> None:
    """save_converted into a temporary sibling, renamed into place once complete. A cache
    that cannot be written is not an error: the model was loaded all the same."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        convert.save_converted(tmp, spec, variables, overwrite=True)
        os.replace(tmp, target)
    except OSError as e:
        print(f"warning: could not cache the converted model in {target} ({e})",
              file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------- downloading


def _network_reason(e: BaseException) -> str:
    if isinstance(e, requests.HTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code} {e.response.reason or ''}".strip()
    if isinstance(e, requests.Timeout):
        return "the server stopped answering (timed out)"
    if isinstance(e, requests.ConnectionError) and "IncompleteRead" not in str(e) and (
            "Connection broken" not in str(e)):
        return "no network connection, or the host cannot be reached"
    if isinstance(e, (requests.exceptions.ChunkedEncodingError,
                      requests.exceptions.ConnectionError)):
        return "the download was cut off before the end"
    return torch_io._one_line(e)


def _is_html(head: bytes) -> bool:
    head = head.lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml"))


_HTML_HINT = ("an HTML page instead of a weight file (Google Drive shows one when its "
              "download quota is exceeded or the file is not shared publicly; try again "
              "later, or download the file in a browser and pass its path)")


def _verify_and_place(src: Source, tmp: pathlib.Path, dest: pathlib.Path,
                      digest: str | None = None) -> pathlib.Path:
    with open(tmp, "rb") as f:
        head = f.read(512)
    if not head:
        raise HubError(f"{src.ref}: the download is empty")
    if _is_html(head):
        raise HubError(f"{src.ref}: got {_HTML_HINT}")
    if digest is None:
        h = hashlib.sha256()
        with open(tmp, "rb") as f:
            for block in iter(lambda: f.read(CHUNK_BYTES), b""):
                h.update(block)
        digest = h.hexdigest()
    if src.sha256 and digest != src.sha256.lower():
        raise HubError(f"{src.ref}: sha256 {digest} does not match the registry's "
                       f"{src.sha256} (a damaged or different file); not used")
    os.replace(tmp, dest)
    print(f"downloaded {src.ref} to {dest} ({dest.stat().st_size} bytes, sha256 {digest})",
          file=sys.stderr)
    return dest


def _temp_in(folder: pathlib.Path, name: str) -> pathlib.Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    os.close(fd)
    return pathlib.Path(tmp)


def _download_url(src: Source, folder: pathlib.Path, progress: bool) -> pathlib.Path:
    dest = folder / src.filename
    tmp = _temp_in(folder, src.filename)
    try:
        try:
            with requests.get(src.location, stream=True, timeout=TIMEOUT_S) as r:
                r.raise_for_status()
                if "text/html" in r.headers.get("Content-Type", ""):
                    raise HubError(f"{src.ref}: got {_HTML_HINT}")
                total = int(r.headers.get("Content-Length") or 0) or None
                h, n = hashlib.sha256(), 0
                with open(tmp, "wb") as f, tqdm(
                        total=total, unit="B", unit_scale=True, desc=src.filename,
                        file=sys.stderr, disable=not progress, leave=False) as bar:
                    for block in r.iter_content(CHUNK_BYTES):
                        f.write(block)
                        h.update(block)
                        n += len(block)
                        bar.update(len(block))
                    f.flush()
                    os.fsync(f.fileno())
        except requests.RequestException as e:
            raise HubError(f"{src.ref}: download failed: {_network_reason(e)}") from None
        if total is not None and n != total:
            raise HubError(f"{src.ref}: download failed: got {n} of {total} bytes "
                           "(the connection was cut off)")
        return _verify_and_place(src, tmp, dest, h.hexdigest())
    except OSError as e:
        raise HubError(f"{src.ref}: cannot write {dest} ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _gdown():
    # Imported on use: only Drive downloads need gdown, and importing it (with requests'
    # HTML parser bs4) adds about 0.3 s to every command start otherwise.
    try:
        import gdown
    except ImportError:  # pragma: no cover - a dependency of the package
        raise HubError("Google Drive downloads need the gdown package: "
                       "pip install gdown") from None
    return gdown


def _gdown_error(gdown) -> type:
    """gdown's own exception base (`gdown.exceptions.DownloadError`, with
    FileURLRetrievalError for quota / permission pages); RuntimeError on old versions."""
    return getattr(getattr(gdown, "exceptions", None), "DownloadError", RuntimeError)


def _drive_error(src: Source, e: BaseException) -> HubError:
    if isinstance(e, requests.RequestException):
        return HubError(f"{src.ref}: Google Drive download failed: {_network_reason(e)}")
    msg = torch_io._one_line(e)
    if re.search(r"quota|too many|many accesses|permission|public link", msg, re.I):
        return HubError(f"{src.ref}: Google Drive refused the download ({msg[:160]}); "
                        "its quota resets after a while, or download the file in a "
                        "browser and pass its path")
    return HubError(f"{src.ref}: Google Drive download failed ({msg[:200]})")


def _download_drive(src: Source, folder: pathlib.Path, progress: bool) -> pathlib.Path:
    gdown = _gdown()
    file_id, name = src.location, src.filename
    try:
        if src.kind == "gdrive_folder":
            listing = gdown.download_folder(id=src.location, skip_download=True,
                                            quiet=True)
            files = [f for f in (listing or []) if not str(f.path).endswith("/")]
            names = [os.path.basename(str(f.path)) for f in files]
            if name:
                match = [f for f, n in zip(files, names) if n.lower() == name.lower()]
            else:
                match = [f for f, n in zip(files, names)
                         if n.lower().endswith((".pth", ".pt", ".safetensors", ".ckpt"))]
            if len(match) != 1:
                what = f"no file {name!r}" if name else "not exactly one weight file"
                raise HubError(f"{src.ref}: the Drive folder has {what} (it holds: "
                               f"{', '.join(names[:12]) or 'nothing visible'}); name one "
                               f"as gdrive:{src.location}/<file name>")
            file_id = match[0].id
            name = name or _safe_name(os.path.basename(str(match[0].path)), "weights")
        dest = folder / name
        if dest.is_file():
            return dest
        tmp = _temp_in(folder, name)
        try:
            out = gdown.download(id=file_id, output=str(tmp), quiet=not progress)
            if out is None:   # older gdown reports failure this way
                raise HubError(f"{src.ref}: Google Drive download failed ({_HTML_HINT})")
            return _verify_and_place(src, tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    except HubError:
        raise
    except (requests.RequestException, _gdown_error(gdown)) as e:
        raise _drive_error(src, e) from None
    except OSError as e:
        raise HubError(f"{src.ref}: cannot write into {folder} ({e.strerror or e})") from None
