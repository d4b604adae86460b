"""Tests for kdsr_jax.data.sources (HR sources) and kdsr_jax.data.pipeline (grain iterator).

Test images encode their own pixel coordinates (R = row, G = column, B = 10 * image id),
so any patch tells which image it came from, where, and which flip/transpose it got.
"""

import io
import json
import logging
import pickle
import sys
import types

import numpy as np
import pytest
from PIL import Image

from kdsr_jax.data import images, input_wait, pipeline, sources

P = 16  # patch size used throughout
SIZES = [(40, 50), (24, 60), (33, 33), (64, 20), (50, 45), (30, 31)]


def coord_image(height: int, width: int, ident: int) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = np.arange(height)[:, None]
    img[..., 1] = np.arange(width)[None, :]
    img[..., 2] = 10 * ident
    return img


@pytest.fixture
def coord_folder(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    for ident, (h, w) in enumerate(SIZES):
        Image.fromarray(coord_image(h, w, ident)).save(folder / f"img{ident:02d}.png")
    return folder


def folder_cfg(folder, **overrides):
    cfg = sources.default_data_config()
    cfg.source = "folder"
    cfg.folder = str(folder)
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


DIHEDRAL = {  # name -> forward transform as applied by augment (hflip, vflip, transpose)
    (h, v, t): (lambda a, h=h, v=v, t=t: _forward(a, h, v, t))
    for h in (0, 1) for v in (0, 1) for t in (0, 1)
}


def _forward(a, h, v, t):
    if h:
        a = a[:, ::-1]
    if v:
        a = a[::-1]
    if t:
        a = a.transpose(1, 0, 2)
    return a


def decode_patch(patch: np.ndarray):
    """-> (image id, top, left, transform key) of a coordinate patch; fails if invalid."""
    ident = int(patch[0, 0, 2]) // 10
    assert (patch[..., 2] == 10 * ident).all()
    height, width = SIZES[ident]
    matches = []
    for key in DIHEDRAL:
        h, v, t = key
        q = patch.transpose(1, 0, 2) if t else patch  # undo in reverse order
        q = q[::-1] if v else q
        q = q[:, ::-1] if h else q
        top, left = int(q[0, 0, 0]), int(q[0, 0, 1])
        rows = top + np.arange(q.shape[0])[:, None]
        cols = left + np.arange(q.shape[1])[None, :]
        if (q[..., 0] == rows).all() and (q[..., 1] == cols).all():
            matches.append((top, left, key))
    assert len(matches) == 1, "patch is not a dihedral transform of one window"
    top, left, key = matches[0]
    assert 0 <= top and top + P <= height and 0 <= left and left + P <= width
    return ident, top, left, key


def take(iterator, n):
    return [next(iterator)["hr"] for _ in range(n)]


# ----------------------------------------------------------------------------- sources

def test_folder_source_skips_each_bad_file_with_one_warning_and_counts_it(tmp_path, caplog):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = coord_image(40, 40, 1)
    Image.fromarray(good).save(folder / "a_good.png")
    Image.fromarray(good[..., 0], "L").save(folder / "b_gray.png")
    Image.fromarray(np.dstack([good, good[..., :1]]), "RGBA").save(folder / "c_rgba.png")
    buf = io.BytesIO()
    Image.fromarray(good).save(buf, "PNG")
    (folder / "d_truncated.png").write_bytes(buf.getvalue()[:-30])
    (folder / "e_empty.png").write_bytes(b"")
    (folder / "f_text.jpg").write_bytes(b"not an image")
    Image.fromarray(coord_image(8, 40, 2)).save(folder / "g_small.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        buf, "JPEG", quality=95)
    (folder / "h_cut_pixels.jpg").write_bytes(buf.getvalue()[:-800])  # header intact
    values16 = np.full((30, 30, 3), 257 * 7 + 200, np.uint16)
    (folder / "i_16bit.png").write_bytes(images.encode_png16(values16))

    with caplog.at_level(logging.WARNING, logger="kdsr_jax.data.sources"):
        src = sources.make_source(folder_cfg(folder, min_size=16))
        assert len(src) == 5  # good, gray, rgba, cut_pixels (unknown yet), 16-bit
        for _ in range(3):  # every access works; bad items are replaced, never raise
            outputs = [src[i] for i in range(len(src))]
    bad = ["d_truncated", "e_empty", "f_text", "g_small", "h_cut_pixels"]
    assert sorted(n.rsplit("/", 1)[-1].split(".")[0] for n in src.skipped) == bad
    assert src.num_skipped == 5
    for name in bad:
        assert sum(name in r.getMessage() for r in caplog.records) == 1, name
    for out in outputs:
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    np.testing.assert_array_equal(outputs[1], np.repeat(good[..., :1], 3, axis=-1))
    np.testing.assert_array_equal(outputs[2], good)
    np.testing.assert_array_equal(outputs[3], outputs[4])  # the cut JPEG -> next good item
    assert (outputs[4] == 8).all()  # 16-bit 2039 -> round(2039/257) = 8 (high byte: 7)


def test_decoded_image_cache_keeps_the_most_recently_used_within_its_byte_budget():
    cache = sources._LRUCache(300)
    arrays = [np.full(100, i, np.uint8) for i in range(4)]
    for i in range(3):
        cache.put(i, arrays[i])
    assert cache.get(0) is arrays[0]  # 0 becomes the most recently used
    cache.put(3, arrays[3])           # over budget: evicts 1, the least recently used
    assert cache.get(1) is None
    assert all(cache.get(i) is arrays[i] for i in (0, 2, 3))
    cache.put(9, np.zeros(301, np.uint8))  # larger than the budget: not cached, no error
    assert cache.get(9) is None and cache.get(0) is arrays[0]
    copy = pickle.loads(pickle.dumps(cache))  # worker processes start empty
    assert copy.max_bytes == 300 and copy.get(0) is None


def test_folder_source_without_usable_images_is_a_clear_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no usable images"):
        sources.make_source(folder_cfg(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        sources.make_source(folder_cfg(tmp_path / "empty"))
    with pytest.raises(ValueError, match="not a folder"):
        sources.make_source(folder_cfg(tmp_path / "missing"))


def test_make_source_validates_its_config():
    cfg = sources.default_data_config()
    cfg.source = "s3"
    with pytest.raises(ValueError, match="unknown data.source"):
        sources.make_source(cfg)
    cfg.source = "folder"
    with pytest.raises(ValueError, match="data.folder"):
        sources.make_source(cfg)
    cfg.source = "tfds"
    with pytest.raises(ValueError, match="tfds_name"):
        sources.make_source(cfg)


def test_bundled_source_min_size_skips_small_photos_with_warning(caplog):
    cfg = sources.default_data_config()
    with caplog.at_level(logging.WARNING, logger="kdsr_jax.data.sources"):
        src = sources.make_source(cfg, min_size=500)
    everything = sources.make_source(cfg)
    assert "rocket" in src.skipped  # rocket is 427 px tall
    assert len(src) == len(everything) - len(src.skipped) < len(everything)
    assert sum("rocket" in r.getMessage() for r in caplog.records) == 1


def test_tfds_source_without_tensorflow_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    cfg = sources.default_data_config()
    cfg.source, cfg.tfds_name = "tfds", "div2k/bicubic_x4"
    with pytest.raises(ValueError, match="pip install tensorflow-datasets") as info:
        sources.make_source(cfg)
    assert "\n" not in str(info.value)


class FakeDataSource:
    """Same interface as tfds.data_source(...): len + getitem -> dict of numpy features."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]


def _png_bytes(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def test_tfds_source_decodes_features_and_replaces_corrupt_records(monkeypatch, caplog):
    rgb = coord_image(20, 24, 0)
    records = [
        {"hr": rgb, "lr": rgb[::4, ::4]},
        {"hr": rgb[..., :1], "lr": None},                        # gray (H, W, 1)
        {"hr": rgb.astype(np.uint16) * 257, "lr": None},         # 16-bit
        {"hr": _png_bytes(rgb[::-1]), "lr": None},               # still encoded
        {"hr": b"corrupt", "lr": None},
    ]
    calls = []
    fake = types.ModuleType("tensorflow_datasets")

    def data_source(name, split, data_dir):
        calls.append((name, split, data_dir))
        return FakeDataSource(records)

    fake.data_source = data_source
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    cfg = sources.default_data_config()
    cfg.source, cfg.tfds_name, cfg.tfds_split = "tfds", "div2k/bicubic_x4", "train[:5]"
    cfg.tfds_data_dir, cfg.image_key = "/data/tfds", "hr"
    with caplog.at_level(logging.WARNING, logger="kdsr_jax.data.sources"):
        src = sources.make_source(cfg)
        out = [src[i] for i in range(len(src))] + [src[4]]
    assert calls == [("div2k/bicubic_x4", "train[:5]", "/data/tfds")]
    np.testing.assert_array_equal(out[0], rgb)
    np.testing.assert_array_equal(out[1], np.repeat(rgb[..., :1], 3, axis=-1))
    np.testing.assert_array_equal(out[2], rgb)
    np.testing.assert_array_equal(out[3], rgb[::-1])
    np.testing.assert_array_equal(out[4], rgb)  # corrupt record 4 -> wraps to record 0
    assert list(src.skipped) == ["div2k/bicubic_x4[train[:5]][4]"]
    assert sum("[4]" in r.getMessage() for r in caplog.records) == 1

    cfg.image_key = "image"
    with pytest.raises(ValueError, match=r"no feature 'image' \(features: \['hr', 'lr'\]\)"):
        sources.make_source(cfg)


# ----------------------------------------------------------------------------- pipeline

def test_batches_have_local_shape_dtype_and_valid_windows(coord_folder):
    it = pipeline.create_train_iterator(folder_cfg(coord_folder), batch_size=4, patch_size=P,
                                        augment="dihedral", seed=0)
    for batch in take(it, 6):
        assert batch.shape == (4, P, P, 3) and batch.dtype == np.uint8
        for patch in batch:
            decode_patch(patch)  # asserts the window lies inside its image
    assert it.step == 6 and it.local_batch == 4


def test_each_epoch_visits_every_image_once(coord_folder):
    it = pipeline.create_train_iterator(folder_cfg(coord_folder), batch_size=3, patch_size=P,
                                        augment="none", seed=5)
    ids = [decode_patch(p)[0] for b in take(it, 4) for p in b]  # 12 = two epochs of 6
    assert sorted(ids[:6]) == list(range(6)) and sorted(ids[6:]) == list(range(6))
    assert ids[:6] != ids[6:]  # reshuffled each epoch


@pytest.mark.parametrize("augment,expected", [("dihedral", 8), ("hflip", 2), ("none", 1)])
def test_augment_produces_exactly_its_transforms_over_many_draws(coord_folder, augment, expected):
    it = pipeline.create_train_iterator(folder_cfg(coord_folder), batch_size=8, patch_size=P,
                                        augment=augment, seed=3)
    keys = {decode_patch(p)[3] for b in take(it, 12) for p in b}
    assert len(keys) == expected
    if augment == "hflip":
        assert keys == {(0, 0, 0), (1, 0, 0)}
    if augment == "none":
        assert keys == {(0, 0, 0)}


class _FixedRng:
    def __init__(self, values):
        self.values = np.asarray(values)

    def random(self, size=None):
        return self.values if size is not None else float(self.values[0])


def test_dihedral_order_is_hflip_then_vflip_then_transpose():
    img = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    out = pipeline.augment_image(img, "dihedral", _FixedRng([0.1, 0.9, 0.1]))  # hflip, transpose
    np.testing.assert_array_equal(out, img[:, ::-1].transpose(1, 0, 2))
    assert not np.array_equal(out, img.transpose(1, 0, 2)[:, ::-1])  # order matters
    out = pipeline.augment_image(img, "dihedral", _FixedRng([0.9, 0.1, 0.9]))  # vflip only
    np.testing.assert_array_equal(out, img[::-1])


def test_pad_bottom_right_is_reflect_101():
    img = np.arange(3 * 4).reshape(3, 4, 1)
    out = pipeline.pad_bottom_right(img, 6)
    assert out.shape == (6, 6, 1)
    np.testing.assert_array_equal(out[:3, :4], img)
    np.testing.assert_array_equal(out[3, :4], img[1, :])  # edge row not repeated
    np.testing.assert_array_equal(out[4, :4], img[0, :])
    np.testing.assert_array_equal(out[:3, 4], img[:, 2])
    np.testing.assert_array_equal(out[:3, 5], img[:, 1])


def test_pad_or_crop_pads_small_images_and_crops_large_ones(tmp_path, caplog):
    folder = tmp_path / "gan"
    folder.mkdir()
    small = coord_image(20, 12, 0)
    Image.fromarray(small).save(folder / "small.png")
    Image.fromarray(coord_image(60, 70, 1)).save(folder / "large.png")
    cfg = folder_cfg(folder, crop="pad_or_crop")
    with caplog.at_level(logging.INFO, logger="kdsr_jax.data.pipeline"):
        it = pipeline.create_train_iterator(cfg, batch_size=2, patch_size=32, augment="hflip", seed=0)
        patches = [p for b in take(it, 8) for p in b]
    padded = [p for p in patches if p[0, 0, 2] == 0]
    assert padded and len(padded) < len(patches)
    for patch in padded:  # GAN order: flip the image first, then pad bottom/right
        flipped = patch[0, 0, 1] != 0
        source = small[:, ::-1] if flipped else small
        np.testing.assert_array_equal(patch, pipeline.pad_bottom_right(source, 32))
    for patch in patches:
        assert patch.shape == (32, 32, 3)
    assert sum("small.png" in r.getMessage() for r in caplog.records) == 1


def test_small_images_skip_or_pad_policy_in_random_crop_mode(coord_folder, caplog):
    # SIZES has images of width 20 and height 24: with P = 30 they are too small.
    with caplog.at_level(logging.WARNING):
        it = pipeline.create_train_iterator(folder_cfg(coord_folder), batch_size=2, patch_size=30,
                                            augment="none", seed=0)
        take(it, 2)
    assert len(it.source) == 4 and it.source.num_skipped == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdsr_jax.data.pipeline"):
        it = pipeline.create_train_iterator(folder_cfg(coord_folder, small_images="pad"),
                                            batch_size=6, patch_size=30, augment="none", seed=0)
        batches = take(it, 4)
    assert len(it.source) == 6 and all(b.shape == (6, 30, 30, 3) for b in batches)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("img01.png" in m for m in messages) == 1 and sum("img03.png" in m for m in messages) == 1


@pytest.mark.parametrize("threads", [0, 2])
def test_resume_from_state_reproduces_uninterrupted_run(coord_folder, threads):
    cfg = folder_cfg(coord_folder, worker_threads=threads)
    make = lambda **kw: pipeline.create_train_iterator(cfg, batch_size=4, patch_size=P,
                                                       augment="dihedral", seed=7, **kw)
    reference = take(make(), 9)
    first = make()
    head = take(first, 4)
    state = json.loads(json.dumps(first.get_state()))  # must survive a JSON checkpoint
    take(first, 2)  # the original keeps going; the saved state must not change
    resumed = make()
    resumed.set_state(state)
    assert resumed.step == 4
    tail = take(resumed, 5)
    for a, b in zip(reference, head + tail):
        np.testing.assert_array_equal(a, b)
    later = make(start_step=2)  # a state restores into an iterator built at another step
    later.set_state(state)
    np.testing.assert_array_equal(take(later, 1)[0], reference[4])


@pytest.mark.parametrize("saved_with,resumed_with", [
    (dict(worker_processes=2), dict(worker_threads=0)),      # issue 16: KeyError before
    (dict(worker_threads=0), dict(worker_processes=2)),
    (dict(worker_processes=2), dict(worker_processes=3)),
    (dict(worker_threads=3, prefetch_batches=5), dict(worker_threads=1))])
def test_resume_does_not_depend_on_loader_threads_or_processes(coord_folder, saved_with,
                                                               resumed_with):
    make = lambda loader, **kw: pipeline.create_train_iterator(
        folder_cfg(coord_folder, **loader), batch_size=4, patch_size=P, augment="dihedral",
        seed=7, **kw)
    reference = take(make({}), 5)
    first = make(saved_with)
    try:
        take(first, 3)
        state = json.loads(json.dumps(first.get_state()))
    finally:
        first.close()
    resumed = make(resumed_with)
    try:
        resumed.set_state(state)
        tail = take(resumed, 2)
    finally:
        resumed.close()
    for a, b in zip(reference[3:], tail):
        np.testing.assert_array_equal(a, b)


def test_start_step_skips_exactly_that_many_batches(coord_folder):
    cfg = folder_cfg(coord_folder)
    reference = take(pipeline.create_train_iterator(cfg, batch_size=4, patch_size=P,
                                                    augment="dihedral", seed=2), 6)
    started = pipeline.create_train_iterator(cfg, batch_size=4, patch_size=P, augment="dihedral",
                                             seed=2, start_step=4)
    assert started.step == 4
    for a, b in zip(reference[4:], take(started, 2)):
        np.testing.assert_array_equal(a, b)


def test_same_seed_same_batches_other_seed_other_batches(coord_folder):
    cfg = folder_cfg(coord_folder)
    run = lambda seed: np.stack(take(pipeline.create_train_iterator(
        cfg, batch_size=4, patch_size=P, augment="dihedral", seed=seed), 3))
    np.testing.assert_array_equal(run(11), run(11))
    assert not np.array_equal(run(11), run(12))


def test_more_threads_than_prefetched_batches_all_work_without_a_warning(coord_folder, caplog):
    """grain runs at most prefetch_buffer_size threads (and warns): the pipeline reads
    ahead by at least one batch per worker thread."""
    reference = take(pipeline.create_train_iterator(
        folder_cfg(coord_folder, worker_threads=1), batch_size=4, patch_size=P, seed=3), 3)
    with caplog.at_level(logging.WARNING):
        it = pipeline.create_train_iterator(
            folder_cfg(coord_folder, worker_threads=4, prefetch_batches=2), batch_size=4,
            patch_size=P, seed=3)
        batches = take(it, 3)
    assert not [r for r in caplog.records if "prefetch_buffer_size" in r.getMessage()]
    for a, b in zip(reference, batches):
        np.testing.assert_array_equal(a, b)


def test_hosts_read_their_rows_of_the_one_global_batch(coord_folder):
    """P hosts together read exactly the 1-host global batch (same images, crops, flips)."""
    cfg = folder_cfg(coord_folder)
    make = lambda **kw: pipeline.create_train_iterator(cfg, batch_size=4, patch_size=P,
                                                       augment="dihedral", seed=3, **kw)
    reference = take(make(process_index=0, process_count=1), 4)
    for count in (2, 4):
        hosts = [make(process_index=h, process_count=count) for h in range(count)]
        assert [it.rows for it in hosts] == [pipeline.host_rows(4, h, count)
                                            for h in range(count)]
        for k in range(4):
            parts = [next(it)["hr"] for it in hosts]
            assert all(p.shape == (4 // count, P, P, 3) for p in parts)
            np.testing.assert_array_equal(np.concatenate(parts), reference[k])
    # Explicit rows (a mesh whose devices interleave processes) pick those rows.
    odd = make(rows=[1, 3])
    np.testing.assert_array_equal(next(odd)["hr"], reference[0][[1, 3]])
    # A host that resumes reads its rows of the saved step, whatever the count before.
    state = make(process_index=0, process_count=1)
    take(state, 2)
    second = make(process_index=1, process_count=2)
    second.set_state(state.get_state())
    np.testing.assert_array_equal(next(second)["hr"], reference[2][2:])
    with pytest.raises(ValueError, match="multiple of the process count 2"):
        pipeline.create_train_iterator(cfg, batch_size=5, patch_size=P, augment="none", seed=0,
                                       process_index=0, process_count=2)
    with pytest.raises(ValueError, match="rows"):
        make(rows=[0, 4])


def test_set_state_refuses_a_differently_configured_pipeline(coord_folder):
    cfg = folder_cfg(coord_folder)
    it = pipeline.create_train_iterator(cfg, batch_size=4, patch_size=P, augment="none", seed=0)
    next(it)
    other = pipeline.create_train_iterator(cfg, batch_size=4, patch_size=P, augment="none", seed=1)
    with pytest.raises(ValueError, match="seed: saved 0 vs now 1"):
        other.set_state(it.get_state())


def test_invalid_pipeline_options_are_clear_errors(coord_folder):
    cfg = folder_cfg(coord_folder)
    kwargs = dict(batch_size=4, patch_size=P, seed=0)
    with pytest.raises(ValueError, match="unknown augment 'rot'"):
        pipeline.create_train_iterator(cfg, augment="rot", **kwargs)
    with pytest.raises(ValueError, match="unknown data.crop"):
        pipeline.create_train_iterator(folder_cfg(coord_folder, crop="center"), **kwargs)
    with pytest.raises(ValueError, match="unknown data.small_images"):
        pipeline.create_train_iterator(folder_cfg(coord_folder, small_images="drop"), **kwargs)


def test_default_config_trains_on_bundled_photos():
    it = pipeline.create_train_iterator(sources.default_data_config(), batch_size=2,
                                        patch_size=64, augment="dihedral", seed=0)
    batch = next(it)
    assert batch["hr"].shape == (2, 64, 64, 3) and batch["hr"].dtype == np.uint8
    assert it.source.describe() == "bundled photos (train)"


def test_worker_processes_give_the_same_batches_as_threads(coord_folder):
    threads = pipeline.create_train_iterator(folder_cfg(coord_folder), batch_size=4, patch_size=P,
                                             augment="dihedral", seed=4)
    expected = take(threads, 3)
    procs = pipeline.create_train_iterator(folder_cfg(coord_folder, worker_processes=1),
                                           batch_size=4, patch_size=P, augment="dihedral", seed=4)
    try:
        got = take(procs, 3)
    finally:
        procs.close()
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- input wait

class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _slow_batches(clock, wait_s):
    while True:
        clock.now += wait_s  # the host waits this long for each batch
        yield {"hr": None}


@pytest.mark.parametrize("wait_s, step_s, warns", [(0.09, 0.01, True), (0.02, 0.08, False)])
def test_input_wait_meter_reports_the_wait_and_warns_once_when_input_bound(caplog, wait_s,
                                                                            step_s, warns):
    clock = _FakeClock()
    meter = input_wait.InputWaitMeter(_slow_batches(clock, wait_s), clock=clock)
    with caplog.at_level(logging.WARNING, logger="kdsr_jax.data.input_wait"):
        for _ in range(3):  # three logging intervals of 4 steps
            for _ in range(4):
                next(meter)
                clock.now += step_s  # dispatch + waiting for the device
            scalars = meter.scalars()
            assert scalars["perf/input_wait_s"] == pytest.approx(wait_s)
            assert scalars["perf/input_wait_fraction"] == pytest.approx(wait_s / (wait_s + step_s))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == (1 if warns else 0)
    if warns:
        assert "input pipeline is the bottleneck" in warnings[0]
        assert "scripts/prepare_data.py" in warnings[0]
    assert meter.scalars() == {}  # no step since the last call


def test_contiguous_pixels_copies_any_dihedral_view_exactly():
    img = np.random.default_rng(0).integers(0, 256, (9, 7, 3), np.uint8)
    for key, forward in DIHEDRAL.items():
        view = forward(img[1:8, 2:7])
        out = pipeline.contiguous_pixels(view)
        assert out.flags.c_contiguous and out.dtype == np.uint8, key
        np.testing.assert_array_equal(out, view)
        into = np.full(view.shape, 7, np.uint8)
        assert pipeline.contiguous_pixels(view, into) is into, key
        np.testing.assert_array_equal(into, view)
    floats = img.astype(np.float32)[:, ::-1].transpose(1, 0, 2)  # any dtype
    np.testing.assert_array_equal(pipeline.contiguous_pixels(floats), floats)
    gray = img[..., 0][:, ::-1]  # other layouts fall back to a plain copy
    np.testing.assert_array_equal(pipeline.contiguous_pixels(gray), gray)
