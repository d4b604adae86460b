"""notebooks/kdsr_demo.ipynb runs end to end in TINY mode on CPU (so it cannot rot):
executed with nbclient in a kernel of this test's Python (a kernelspec in a temp dir).

* download path: the model "name" is a URL on a local HTTP server (127.0.0.1) serving a
  tiny official-layout .pth, downloaded into a temporary cache, converted and used for
  both the comparison and the user's image (an RGBA file: alpha kept, written to the
  output folder, not next to the input);
* offline path: the download fails, and the untrained toy fallback is labelled as such.
"""

import json
import os
import pathlib
import socket
import sys

import jax
import nbformat
import numpy as np
from nbclient import NotebookClient
from PIL import Image

from kdsr_jax import convert, models
from kdsr_jax.data import images
from test_hub import _Server

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "kdsr_demo.ipynb"
KERNEL_NAME = "kdsr-jax-test"


def _kernelspec(tmp_path) -> str:
    d = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    d.mkdir(parents=True)
    (d / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kdsr-jax test", "language": "python"}))
    return str(tmp_path / "jupyter")


def _run(tmp_path, monkeypatch, model_ref: str, my_image: str = ""):
    monkeypatch.setenv("JUPYTER_PATH", _kernelspec(tmp_path))
    monkeypatch.setenv("KDSR_DEMO_TINY", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("KDSR_MY_IMAGE", my_image)
    monkeypatch.setenv("KDSR_MODEL", model_ref)
    monkeypatch.setenv("KDSR_PHOTO_MODEL", model_ref)
    monkeypatch.setenv("KDSR_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDSR_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")
    pngs = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    return text, pngs


def test_notebook_downloads_the_model_by_url_and_keeps_alpha(tmp_path, monkeypatch):
    spec = models.preset("tiny", kind="student")
    convert.to_torch(spec, models.init_variables(spec, jax.random.key(0)), tmp_path / "w.pth")
    server = _Server({"/KDSRsM_iso_x4.pt": (200, "application/octet-stream",
                                            (tmp_path / "w.pth").read_bytes(), None)})
    try:
        src = tmp_path / "in" / "mine.png"
        src.parent.mkdir()
        pixels = np.random.default_rng(0).integers(0, 256, (20, 24, 4), dtype=np.uint8)
        pixels[..., 3] = np.linspace(0, 255, 24, dtype=np.uint8)[None]
        Image.fromarray(pixels, "RGBA").save(src)
        text, pngs = _run(tmp_path, monkeypatch, server.url + "/KDSRsM_iso_x4.pt", str(src))
    finally:
        server.stop()
    assert "kdsr_jax available" in text
    assert f"loaded {server.url}/KDSRsM_iso_x4.pt" in text and "step 2/2" not in text
    assert "bicubic" in text and "KDSR (KDSRsM_iso_x4.pt)" in text and "dB" in text
    assert "toy" not in text.lower()
    assert len(pngs) == 2                                   # comparison + own image
    out = tmp_path / "outputs" / "mine_x4.png"
    assert f"saved {out}" in text and "with alpha" in text
    assert sorted(os.listdir(src.parent)) == ["mine.png"]    # nothing next to the input
    rgb, alpha, _ = images.load_image_full(out)
    assert rgb.shape == (80, 96, 3) and alpha is not None
    assert alpha[:, :8].mean() < alpha[:, -8:].mean()      # the gradient survived
    assert server.hits == ["/KDSRsM_iso_x4.pt"]             # downloaded once, then cached


def test_notebook_offline_falls_back_to_a_labelled_untrained_toy(tmp_path, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                               # nothing listens there: offline
    text, pngs = _run(tmp_path, monkeypatch, f"http://127.0.0.1:{port}/KDSRsM_iso_x4.pt")
    assert "could not load" in text and "no network connection" in text
    assert "step 2/2" in text                               # the toy student trained
    assert "UNTRAINED TOY network" in text and "untrained toy net (not KDSR)" in text
    assert "KDSR (" not in text                             # nothing claims to be KDSR
    assert len(pngs) == 2 and "saved" in text
