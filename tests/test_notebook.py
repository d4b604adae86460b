"""notebooks/kdsr_demo.ipynb runs end to end in TINY mode on CPU (so it cannot rot):
executed with nbclient in a kernel of this test's Python (a kernelspec in a temp dir)."""

import json
import os
import pathlib
import sys

import nbformat
from nbclient import NotebookClient

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


def test_demo_notebook_runs_in_tiny_mode_and_shows_psnr(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", _kernelspec(tmp_path))
    monkeypatch.setenv("KDSR_DEMO_TINY", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("KDSR_MY_IMAGE", "")
    monkeypatch.setenv("KDSR_CHECKPOINT", "")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "kdsr_jax available" in text
    assert "step 2/2" in text                                  # the toy student trained
    assert "bicubic" in text and "KDSR" in text and "dB" in text
    images = [o for c in nb.cells for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 2                                    # comparison + own image
    assert "saved" in text
