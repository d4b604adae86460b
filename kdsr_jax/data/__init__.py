"""kdsr_jax.data: HR image sources and the host training pipeline (TRAINING.md §1.1, §2.1).

* `images`: file I/O (`load_image`, `load_image_full`, `save_png`, `list_images`).
* `samples`: real photos shipped with scikit-image (`bundled_images`, `export_bundled`).
* `sources`: folder / prepared / TFDS / bundled HR sources (`make_source`,
  `default_data_config`).
* `prepared`: an image folder decoded once into memory-mapped arrays (`prepare`;
  CLI `scripts/prepare_data.py`).
* `input_wait`: how long training waits for input (`InputWaitMeter`).
* `pipeline`: checkpointable grain iterator of HR patches (`create_train_iterator`).
"""

from kdsr_jax.data.images import ImageError, list_images, load_image, load_image_full, save_png
from kdsr_jax.data.pipeline import TrainIterator, create_train_iterator
from kdsr_jax.data.samples import bundled_images, export_bundled
from kdsr_jax.data.sources import default_data_config, make_source

__all__ = [
    "ImageError", "TrainIterator", "bundled_images", "create_train_iterator",
    "default_data_config", "export_bundled", "list_images", "load_image", "load_image_full",
    "make_source", "save_png",
]
