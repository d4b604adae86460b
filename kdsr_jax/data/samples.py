"""Real photographs bundled with the installed scikit-image package.

They let the demo, notebooks and tests train and evaluate without any download: the
files live inside `skimage/data/` of the installed wheel (no network access, no pooch
fetch) and are read directly with `images.load_image` (grayscale replicated to RGB).
Nothing is copied into this repo.

The split is fixed. The held-out photos cover four kinds of picture a user would try
(a face, a fine texture, a drawing, natural scenes), so the demo's held-out PSNR says
how the model does on content it has never seen, not only on more of the same:

=========  ======================  ==========================  =========  ==============
split      name                    file in skimage/data        size HxW   kind
=========  ======================  ==========================  =========  ==============
train      rocket                  rocket.jpg                  427x640    outdoor scene
train      motorcycle              motorcycle_left.png         500x741    indoor scene
train      immunohistochemistry    ihc.png                     512x512    microscopy
train      hubble_deep_field       hubble_deep_field.jpg       872x1000   astronomy
train      camera                  camera.png (gray)           512x512    outdoor, person
train      grass                   grass.png (gray)            512x512    texture
train      brick                   brick.png (gray)            512x512    texture
train      coins                   coins.png (gray)            303x384    objects
train      moon                    moon.png (gray)             512x512    surface
heldout    astronaut               astronaut.png               512x512    face/portrait
heldout    gravel                  gravel.png (gray)           512x512    fine texture
heldout    logo                    logo.png (alpha dropped)    500x500    drawing
heldout    chelsea                 chelsea.png                 300x451    natural scene
heldout    coffee                  coffee.png                  400x600    natural scene
=========  ======================  ==========================  =========  ==============

Left out on purpose: `motorcycle_right.png` (a near-copy of the left stereo view),
`retina.jpg` (mostly black background), `cell.png` and `clock_motion.png` (blurred HR:
they would teach the model to blur), `page.png` and `text.png` (smaller than 256 px),
and synthetic images (colour wheel, phantom, chessboards, horse silhouette).
"""

from __future__ import annotations

import importlib.resources
import os

import numpy as np

from kdsr_jax.data import images

TRAIN_PHOTOS = (
    ("rocket", "rocket.jpg"),
    ("motorcycle", "motorcycle_left.png"),
    ("immunohistochemistry", "ihc.png"),
    ("hubble_deep_field", "hubble_deep_field.jpg"),
    ("camera", "camera.png"),
    ("grass", "grass.png"),
    ("brick", "brick.png"),
    ("coins", "coins.png"),
    ("moon", "moon.png"),
)
HELDOUT_PHOTOS = (
    ("astronaut", "astronaut.png"),
    ("gravel", "gravel.png"),
    ("logo", "logo.png"),
    ("chelsea", "chelsea.png"),
    ("coffee", "coffee.png"),
)
# What kind of picture each held-out photo is (the demo's table shows it).
HELDOUT_KINDS = {
    "astronaut": "face/portrait",
    "gravel": "fine texture",
    "logo": "drawing",
    "chelsea": "natural scene",
    "coffee": "natural scene",
}
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
