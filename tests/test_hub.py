"""kdsr_jax.hub: weights by registry name, URL or Google Drive link (offline: a local
HTTP server on 127.0.0.1 and a stubbed gdown)."""

import hashlib
import http.server
import threading
import types

import jax
import numpy as np
import pytest
import requests

from kdsr_jax import checkpoints, convert, hub, models

SPEC = models.preset("tiny", kind="student", n_feats=8, n_blocks=1, n_resblocks=1)


@pytest.fixture(scope="module")
def pth_bytes(tmp_path_factory):
    """A tiny official-layout student .pth (what the registry serves, in miniature)."""
    variables = models.init_variables(SPEC, jax.random.PRNGKey(3), (8, 8))
    path = tmp_path_factory.mktemp("pth") / "tiny.pth"
    convert.to_torch(SPEC, variables, path)
    return path.read_bytes(), variables


class _Server:
    """A bounded local HTTP server: routes path -> (status, headers, body, cut_at)."""

    def __init__(self, routes):
        self.routes, self.hits = routes, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits.append(self.path)
                status, ctype, body, cut = outer.routes.get(
                    self.path, (404, "text/plain", b"not found", None))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def server(pth_bytes):
    body = pth_bytes[0]
    srv = _Server({
        "/w/tiny.pth": (200, "application/octet-stream", body, None),
        "/w/trunc.pth": (200, "application/octet-stream", body, len(body) // 2),
        "/w/page.pth": (200, "text/html; charset=utf-8", b"<!DOCTYPE html><html>quota", None),
        "/w/sneaky.pth": (200, "application/octet-stream", b"<html><body>quota</body>", None),
        "/w/notes.pth": (200, "application/octet-stream", b"just some text, no weights", None),
    })
    yield srv
    srv.stop()


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_url_downloads_converts_and_then_works_with_the_server_gone(server, cache, pth_bytes):
    url = server.url + "/w/tiny.pth"
    model, variables = checkpoints.load(url)
    assert model.spec.kind == "student" and model.spec.n_feats == 8
    _same(variables["params"], pth_bytes[1]["params"])
    src = hub.parse(url)
    assert (cache / src.key / "tiny.pth").read_bytes() == pth_bytes[0]
    assert (cache / src.key / hub.CONVERTED_DIR / convert.MODEL_JSON).is_file()
    assert not [p for p in (cache / src.key).iterdir() if p.name.endswith(".part")]
    server.stop()                                        # offline from here on
    model2, variables2 = checkpoints.load(url)
    _same(variables2["params"], variables["params"])
    # Only the converted cache gone: re-converted from the cached weights, still offline.
    import shutil
    shutil.rmtree(cache / src.key / hub.CONVERTED_DIR)
    _, variables3 = checkpoints.load(url)
    _same(variables3["params"], variables["params"])
    assert server.hits == ["/w/tiny.pth"]


def test_truncated_download_is_refused_and_leaves_nothing(server, cache):
    url = server.url + "/w/trunc.pth"
    with pytest.raises(hub.HubError) as info:
        checkpoints.load(url)
    msg = str(info.value)
    assert "\n" not in msg and "cut off" in msg, msg
    folder = cache / hub.parse(url).key
    assert list(folder.iterdir()) == []                  # no half file, no temp file


@pytest.mark.parametrize("path, expected", [
    ("/w/missing.pth", "HTTP 404"),
    ("/w/page.pth", "HTML page"),
    ("/w/sneaky.pth", "HTML page"),
    ("/w/notes.pth", "not a KDSR checkpoint"),
])
def test_download_errors_are_one_line_and_nothing_is_cached(server, cache, path, expected):
    url = server.url + path
    with pytest.raises(ValueError) as info:
        checkpoints.load(url)
    msg = str(info.value)
    assert "\n" not in msg and expected in msg and url in msg, msg
    folder = cache / hub.parse(url).key
    assert not folder.exists() or list(folder.iterdir()) == []


def test_no_network_is_a_one_line_error(cache):
    # A port nothing listens on (bound then closed): connection refused.
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(hub.HubError, match="no network connection"):
        checkpoints.load(f"http://127.0.0.1:{port}/KDSRsM_iso_x4.pt")


def test_registry_sha256_is_checked(server, cache, pth_bytes, monkeypatch):
    good = hashlib.sha256(pth_bytes[0]).hexdigest()
    monkeypatch.setitem(hub.REGISTRY, "Test-OK", hub.Release(
        "Test-OK", "test", "tiny.pth", url=server.url + "/w/tiny.pth", sha256=good))
    monkeypatch.setitem(hub.REGISTRY, "Test-Bad", hub.Release(
        "Test-Bad", "test", "tiny.pth", url=server.url + "/w/tiny.pth", sha256="0" * 64))
    model, _ = checkpoints.load("test ok")               # names ignore case / separators
    assert model.spec.n_feats == 8
    with pytest.raises(hub.HubError, match="sha256"):
        checkpoints.load("Test-Bad")
    assert not (cache / "Test-Bad" / "tiny.pth").exists()


def test_registry_lists_the_official_models_with_their_drive_ids():
    text = hub.list_models()
    for name in ("KDSRs-M-iso-x4", "KDSRs-L-iso-x4", "KDSRs-M-aniso-x4", "KDSR-GAN-x4",
                 "KDSR-GANV2-x4"):
        assert name in text and hub.is_remote(name)
    assert hub.CLASSIC_FOLDER in text and hub.GAN_FOLDER in text and hub.GANV2_FILE in text
    assert hub.parse("KDSR-GANV2-x4").kind == "gdrive_file"
    src = hub.parse("KDSRs-M-iso-x4")
    assert (src.kind, src.location, src.filename) == ("gdrive_folder", hub.CLASSIC_FOLDER,
                                                      "KDSRsM_iso_x4.pt")


@pytest.mark.parametrize("ref, kind, location", [
    ("https://drive.google.com/file/d/1plvMt7VrOY9YLbWrpchOzi6t1wcqkzBl/view?usp=sharing",
     "gdrive_file", "1plvMt7VrOY9YLbWrpchOzi6t1wcqkzBl"),
    ("https://drive.google.com/uc?id=1plvMt7VrOY9YLbWrpchOzi6t1wcqkzBl", "gdrive_file",
     "1plvMt7VrOY9YLbWrpchOzi6t1wcqkzBl"),
    ("https://drive.google.com/drive/folders/113NBvfcrCedvend96KqDiRYVy3N8yprl",
     "gdrive_folder", "113NBvfcrCedvend96KqDiRYVy3N8yprl"),
    ("gdrive:113NBvfcrCedvend96KqDiRYVy3N8yprl/KDSRsL_iso_x4.pt", "gdrive_folder",
     "113NBvfcrCedvend96KqDiRYVy3N8yprl"),
    ("1plvMt7VrOY9YLbWrpchOzi6t1wcqkzBl", "gdrive_file", "1plvMt7VrOY9YLbWrpchOzi6t1wcqkzBl"),
    ("https://example.org/a/KDSRsM_iso_x4.pt", "url", "https://example.org/a/KDSRsM_iso_x4.pt"),
])
def test_links_and_ids_are_recognised(ref, kind, location):
    src = hub.parse(ref)
    assert (src.kind, src.location) == (kind, location)


def test_local_paths_are_never_taken_for_remote(tmp_path):
    assert not hub.is_remote(str(tmp_path))
    assert hub.parse("weights/KDSRsM.pth") is None
    assert hub.parse("my_long_checkpoint_folder_name_here") is None   # not a Drive id
    (tmp_path / "1plvMt7VrOY9YLbWrpchOzi6t1wcqkzBl").write_bytes(b"x")
    assert not hub.is_remote(str(tmp_path / "1plvMt7VrOY9YLbWrpchOzi6t1wcqkzBl"))


class _Gdown:
    """Stands in for the gdown module: a Drive folder listing and file downloads."""

    class exceptions:
        class DownloadError(Exception):
            pass

    def __init__(self, files, fail=None):
        self.files, self.fail, self.calls = files, fail, []

    def download_folder(self, id, skip_download, quiet):
        assert skip_download
        self.calls.append(("folder", id))
        return [types.SimpleNamespace(id=fid, path=f"models/{name}", local_path=name)
                for fid, (name, _) in self.files.items()]

    def download(self, id, output, quiet):
        self.calls.append(("file", id))
        if self.fail:
            raise self.exceptions.DownloadError(self.fail)
        with open(output, "wb") as f:
            f.write(self.files[id][1])
        return output


def test_registry_name_downloads_from_the_drive_folder_with_gdown(cache, pth_bytes,
                                                                  monkeypatch):
    stub = _Gdown({"idA" + "x" * 30: ("KDSRsL_iso_x4.pt", b"other"),
                   "idB" + "y" * 30: ("KDSRsM_iso_x4.pt", pth_bytes[0])})
    monkeypatch.setitem(__import__("sys").modules, "gdown", stub)
    model, variables = checkpoints.load("KDSRs-M-iso-x4")
    _same(variables["params"], pth_bytes[1]["params"])
    assert stub.calls == [("folder", hub.CLASSIC_FOLDER), ("file", "idB" + "y" * 30)]
    assert (cache / "KDSRs-M-iso-x4" / "KDSRsM_iso_x4.pt").is_file()
    checkpoints.load("KDSRs-M-iso-x4")                   # cached: gdown not called again
    assert len(stub.calls) == 2


def test_drive_quota_and_html_pages_are_one_line_errors(cache, monkeypatch):
    stub = _Gdown({hub.GANV2_FILE: ("KDSRS-GANV2.pth", b"<!DOCTYPE html><html>Quota")})
    monkeypatch.setitem(__import__("sys").modules, "gdown", stub)
    with pytest.raises(hub.HubError, match="HTML page") as info:
        checkpoints.load("KDSR-GANV2-x4")
    assert "quota" in str(info.value)
    stub.fail = ("Too many users have viewed or downloaded this file recently. "
                 "Please try accessing the file again later.")
    with pytest.raises(hub.HubError, match="Google Drive refused") as info:
        checkpoints.load("KDSR-GANV2-x4")
    assert "\n" not in str(info.value)
    assert not any((cache / "KDSR-GANV2-x4").iterdir())


def test_drive_folder_without_the_named_file_lists_what_it_holds(cache, monkeypatch):
    stub = _Gdown({"idA" + "x" * 30: ("README.txt", b"")})
    monkeypatch.setitem(__import__("sys").modules, "gdown", stub)
    with pytest.raises(hub.HubError, match="README.txt"):
        checkpoints.load("KDSR-GAN-x4")


def test_drive_offline_is_a_one_line_error(cache, monkeypatch):
    stub = _Gdown({})

    def offline(**kw):
        raise requests.ConnectionError("Max retries exceeded (NameResolutionError)")

    stub.download_folder = offline
    monkeypatch.setitem(__import__("sys").modules, "gdown", stub)
    with pytest.raises(hub.HubError, match="no network connection"):
        checkpoints.load("KDSRs-L-iso-x4")


def test_convert_cli_takes_a_url_and_lists_models(server, cache, tmp_path):
    import os
    import pathlib
    import subprocess
    import sys
    repo = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, KDSR_JAX_CACHE=str(cache),
               PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = lambda *a: subprocess.run([sys.executable, str(repo / "scripts" / "convert.py"), *a],  # noqa: E731
                                    capture_output=True, text=True, env=env, timeout=300)
    r = run("--input", server.url + "/w/tiny.pth", "--output", str(tmp_path / "conv"))
    assert r.returncode == 0, r.stderr
    assert checkpoints.load(str(tmp_path / "conv"))[0].spec.n_feats == 8
    r = run("--input", server.url + "/w/missing.pth", "--output", str(tmp_path / "c2"))
    assert r.returncode == 1 and r.stderr.strip().startswith("error: ") and "HTTP 404" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run("--list-models")
    assert r.returncode == 0 and "KDSRs-L-iso-x4" in r.stdout


def test_ctrl_c_during_a_download_leaves_no_file(server, cache, monkeypatch):
    """KeyboardInterrupt mid-transfer: the temporary file is removed, nothing in the
    cache passes as complete, and the next try downloads again."""
    import tqdm as tqdm_module

    calls = []

    def interrupted(self, n=1):
        calls.append(n)
        raise KeyboardInterrupt

    monkeypatch.setattr(tqdm_module.tqdm, "update", interrupted)
    url = server.url + "/w/tiny.pth"
    with pytest.raises(KeyboardInterrupt):
        checkpoints.load(url)
    assert calls and list((cache / hub.parse(url).key).iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv(hub.CACHE_ENV, str(cache))
    assert checkpoints.load(url)[0].spec.n_feats == 8
