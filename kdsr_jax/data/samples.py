"""Real colour photographs bundled with the installed scikit-image package.

They let the demo, notebooks and tests train and evaluate without any download: the
files live inside `skimage/data/` of the installed wheel (no network access, no pooch
fetch) and are read directly with `images.load_image`. Nothing is copied into this repo.

The split is fixed (used by the demo to report held-out PSNR):

=========  ======================  ==========================  ============
split      name                    file in skimage/data        size (HxW)
=========  ======================  ==========================  ============
train      astronaut               astronaut.png               512x512
train      rocket                  rocket.jpg                  427x640
train      motorcycle              motorcycle_left.png         500x741
train      immunohistochemistry    ihc.png                     512x512
train      hubble_deep_field       hubble_deep_field.jpg       872x1000
heldout    chelsea                 chelsea.png                 300x451
heldout    coffee                  coffee.png                  400x600
=========  ======================  ==========================  ============

Left out on purpose: `motorcycle_right.png` (a near-copy of the left stereo view, it
would leak into the held-out set if split differently), `retina.jpg` (mostly black
background, 1411x1411), synthetic images (colour wheel, logo) and grayscale images.
"""

from __future__ import annotations

import importlib.resources
import os

import numpy as np

from kdsr_jax.data import images

TRAIN_PHOTOS = (
    ("astronaut", "astronaut.png"),
    ("rocket", "rocket.jpg"),
    ("motorcycle", "motorcycle_left.png"),
    ("immunohistochemistry", "ihc.png"),
    ("hubble_deep_field", "hubble_deep_field.jpg"),
)
HELDOUT_PHOTOS = (
    ("chelsea", "chelsea.png"),
    ("coffee", "coffee.png"),
)
SPLITS = ("train", "heldout", "all")


def _photos(split: str) -> tuple[tuple[str, str], ...]:
    if split == "train":
        return TRAIN_PHOTOS
    if split == "heldout":
        return HELDOUT_PHOTOS
    if split == "all":
        return TRAIN_PHOTOS + HELDOUT_PHOTOS
    raise ValueError(f"unknown bundled split {split!r}; expected one of {SPLITS}")


def data_dir() -> str:
    """Folder of scikit-image's bundled data files."""
    try:
        return os.fspath(importlib.resources.files("skimage") / "data")
    except ModuleNotFoundError:
        raise ValueError("bundled photos need scikit-image: pip install scikit-image") from None


def bundled_paths(split: str = "train") -> list[tuple[str, str]]:
    """[(name, file path)] of the bundled photos of `split`."""
    folder = data_dir()
    return [(name, os.path.join(folder, fname)) for name, fname in _photos(split)]


def bundled_images(split: str = "train") -> list[tuple[str, np.ndarray]]:
    """[(name, uint8 (H, W, 3) RGB)] for 'train', 'heldout' or 'all' (train first)."""
    return [(name, images.load_image(path)) for name, path in bundled_paths(split)]


def export_bundled(folder, split: str = "train") -> list[str]:
    """Writes the photos of `split` as `<name>.png` into `folder`; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for name, img in bundled_images(split):
        path = os.path.join(folder, f"{name}.png")
        images.save_png(path, img.astype(np.float32) / 255.0)
        written.append(path)
    return written
