"""Prepared datasets (kdsr_jax.data.prepared, scripts/prepare_data.py, data.source='prepared').

A small folder mixes every reading case (gray, RGBA, 16-bit, EXIF-rotated JPEG, a
header-bad file, a JPEG cut inside its pixel data, images smaller than the patch): the
prepared source must give the folder source's batches exactly, for both crop modes.
"""

import importlib.util
import io
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from kdsr_jax.data import images, pipeline, prepared, sources
from kdsr_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pattern(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


@pytest.fixture
def mixed_folder(tmp_path):
    folder = tmp_path / "hr"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(_pattern(40, 50, 0)).save(folder / "a.png")
    Image.fromarray(_pattern(36, 36, 1)[..., 0], "L").save(folder / "b_gray.png")
    Image.fromarray(np.dstack([_pattern(34, 45, 2), _pattern(34, 45, 3)[..., :1]]),
                    "RGBA").save(folder / "c_rgba.png")
    (folder / "d_16bit.png").write_bytes(images.encode_png16(
        np.random.default_rng(4).integers(0, 65536, (38, 33, 3), dtype=np.uint16)))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the decoded image is 44 x 35
    Image.fromarray(_pattern(35, 44, 5)).save(folder / "e_exif.jpg", exif=exif, quality=95)
    (folder / "f_text.png").write_bytes(b"not an image")
    buf = io.BytesIO()
    Image.fromarray(_pattern(64, 64, 6)).save(buf, "JPEG", quality=95)
    (folder / "g_cut_pixels.jpg").write_bytes(buf.getvalue()[:-800])  # header intact
    Image.fromarray(_pattern(20, 60, 7)).save(folder / "h_small.png")
    Image.fromarray(_pattern(48, 41, 8)).save(folder / "sub" / "i.png")
    return folder


def _cfg(**fields):
    cfg = sources.default_data_config()
    for key, value in fields.items():
        cfg[key] = value
    return cfg


def _batches(cfg, n=6, **kwargs):
    it = pipeline.create_train_iterator(cfg, batch_size=3, seed=5, **kwargs)
    try:
        return [next(it)["hr"] for _ in range(n)]
    finally:
        it.close()


@pytest.mark.parametrize("crop, patch, augment, small", [
    ("random", 32, "dihedral", "skip"),       # classic §1.1, small images left out
    ("random", 32, "dihedral", "pad"),
    ("pad_or_crop", 40, "hflip", "skip"),     # GAN §2.1: pad small images, crop large ones
])
def test_prepared_source_gives_the_folder_sources_batches(mixed_folder, tmp_path, crop, patch,
                                                          augment, small):
    out = tmp_path / "prepared"
    prepared.prepare(mixed_folder, out, workers=1, progress=False)
    common = dict(crop=crop, small_images=small, worker_threads=2)
    folder = _batches(_cfg(source="folder", folder=str(mixed_folder), **common),
                      patch_size=patch, augment=augment)
    ready = _batches(_cfg(source="prepared", path=str(out), **common),
                     patch_size=patch, augment=augment)
    for a, b in zip(folder, ready):
        np.testing.assert_array_equal(a, b)


def test_arrays_follow_the_training_reading_rules_and_bad_files_are_counted(mixed_folder, tmp_path):
    out = tmp_path / "prepared"
    result = prepared.prepare(mixed_folder, out, workers=1, progress=False)
    m = result.manifest
    assert (m["num_files"], m["num_images"], m["num_skipped"], m["num_failed"]) == (9, 7, 1, 1)
    assert list(m["skipped"]) == ["f_text.png"]
    assert [e["name"] for e in m["images"]] == [
        "a.png", "b_gray.png", "c_rgba.png", "d_16bit.png", "e_exif.jpg", "g_cut_pixels.jpg",
        "h_small.png", "sub/i.png"]
    assert "error" in m["images"][5] and "file" not in m["images"][5]
    src = sources.PreparedSource(out)
    for i, entry in enumerate(m["images"]):
        if "file" in entry:
            expected = images.load_image(mixed_folder / entry["name"])
            assert src[i].shape == tuple(entry["shape"])
            np.testing.assert_array_equal(src[i], expected)
    assert src[4].shape == (44, 35, 3)  # EXIF orientation applied
    np.testing.assert_array_equal(src[5], src[6])  # the cut JPEG -> next good item
    assert "g_cut_pixels.jpg" in src.skipped
    assert m["total_bytes"] == sum(int(np.prod(e["shape"])) for e in m["images"] if "file" in e)


def test_interrupted_preparation_is_unfinished_then_resumes(mixed_folder, tmp_path, monkeypatch):
    out = tmp_path / "prepared"
    real_load, calls = images.load_image, []

    def load_then_interrupt(path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_load(path)

    monkeypatch.setattr(images, "load_image", load_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepared.prepare(mixed_folder, out, workers=1, progress=False)
    monkeypatch.setattr(images, "load_image", real_load)
    assert not (out / prepared.MANIFEST).exists()
    assert len(os.listdir(out / prepared.ARRAY_DIR)) == 2  # no temporary file left behind
    with pytest.raises(prepared.PreparedDataError, match="preparation did not finish"):
        pipeline.create_train_iterator(_cfg(source="prepared", path=str(out)), batch_size=2,
                                       patch_size=16, seed=0)
    (out / prepared.ARRAY_DIR / ".000001.npy.tmp-0123").write_bytes(b"partial")  # a killed writer
    result = prepared.prepare(mixed_folder, out, workers=1, progress=False)
    assert (result.reused, result.decoded) == (2, 5)
    assert len(os.listdir(out / prepared.ARRAY_DIR)) == 7
    again = prepared.prepare(mixed_folder, out, workers=1, progress=False)
    assert again.up_to_date and again.decoded == 0


def test_changed_source_is_detected_and_only_its_files_redone(mixed_folder, tmp_path):
    out = tmp_path / "prepared"
    prepared.prepare(mixed_folder, out, workers=1, progress=False)
    cfg = _cfg(source="prepared", path=str(out), folder=str(mixed_folder))
    assert len(sources.make_source(cfg)) == 8  # the folder still matches the manifest
    Image.fromarray(_pattern(40, 50, 99)).save(mixed_folder / "a.png")
    os.utime(mixed_folder / "a.png", ns=(1, 1))  # a different mtime, whatever the clock
    with pytest.raises(prepared.PreparedDataError, match="from an earlier state of"):
        sources.make_source(cfg)
    result = prepared.prepare(mixed_folder, out, workers=1, progress=False)
    assert (result.decoded, result.reused) == (1, 6)
    assert len(os.listdir(out / prepared.ARRAY_DIR)) == 7  # the stale array is gone
    np.testing.assert_array_equal(sources.make_source(cfg)[0], _pattern(40, 50, 99))


def test_damaged_or_missing_datasets_are_one_line_errors(mixed_folder, tmp_path):
    out = tmp_path / "prepared"
    m = prepared.prepare(mixed_folder, out, workers=1, progress=False).manifest
    victim = out / m["images"][0]["file"]
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(prepared.PreparedDataError, match="1 prepared array.* damaged"):
        sources.make_source(_cfg(source="prepared", path=str(out)))
    rebuilt = prepared.prepare(mixed_folder, out, workers=1, progress=False)  # repairs it
    assert rebuilt.decoded == 1
    with pytest.raises(ValueError, match="needs data.path"):
        sources.make_source(_cfg(source="prepared"))
    with pytest.raises(ValueError, match="not a prepared dataset"):
        sources.make_source(_cfg(source="prepared", path=str(mixed_folder)))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and not a prepared dataset"):
        prepared.prepare(mixed_folder, tmp_path / "other", workers=1, progress=False)


def test_mismatches_name_what_differs_and_the_command_that_fixes_them(mixed_folder, tmp_path):
    out = tmp_path / "prepared"
    prepared.prepare(mixed_folder, out, workers=1, progress=False)
    other = tmp_path / "other_hr"
    other.mkdir()
    Image.fromarray(_pattern(40, 50, 1)).save(other / "x.png")
    with pytest.raises(prepared.PreparedDataError) as e:   # another folder
        sources.make_source(_cfg(source="prepared", path=str(out), folder=str(other)))
    assert f"prepared from {mixed_folder}, and data.folder={other} holds other files" in str(e.value)
    assert f"--input {other} --output {out}" in str(e.value)
    with pytest.raises(prepared.PreparedDataError,   # the folder, listed another way
                       match="prepared recursively, but data.recursive=False; set "
                             "data.recursive=True"):
        sources.make_source(_cfg(source="prepared", path=str(out), folder=str(mixed_folder),
                                 recursive=False))
    with pytest.raises(prepared.PreparedDataError, match="data.recursive=False has no effect"):
        sources.make_source(_cfg(source="prepared", path=str(out), recursive=False))
    flat = tmp_path / "flat"
    prepared.prepare(mixed_folder, flat, recursive=False, workers=1, progress=False)
    assert len(sources.make_source(_cfg(source="prepared", path=str(flat)))) == 7  # no sub/
    assert len(sources.make_source(_cfg(source="prepared", path=str(flat),
                                        folder=str(mixed_folder), recursive=False))) == 7
    with pytest.raises(prepared.PreparedDataError,   # an image folder given as data.path
                       match=f"an image folder, not a prepared dataset.*--input {other} "):
        sources.make_source(_cfg(source="prepared", path=str(other)))
    before = sorted(os.listdir(out / prepared.ARRAY_DIR))
    with pytest.raises(ValueError, match=f"holds the images of {mixed_folder}, not of "
                                         f"--input {other}.*--force"):
        prepared.prepare(other, out, workers=1, progress=False)
    assert sorted(os.listdir(out / prepared.ARRAY_DIR)) == before  # nothing was replaced
    assert len(prepared.read_manifest(out)["images"]) == 8
    replaced = prepared.prepare(other, out, force=True, workers=1, progress=False)
    assert replaced.manifest["num_images"] == 1
    logs = []
    (out / prepared.MANIFEST).write_text("{broken")
    prepared.prepare(other, out, workers=1, progress=False, log=logs.append)
    assert len(logs) == 1 and logs[0].startswith(f"rebuilding {out} (")
    assert "re-run" not in logs[0] and "arrays of unchanged files are kept" in logs[0]


def test_prepared_source_maps_instead_of_caching(mixed_folder, tmp_path):
    out = tmp_path / "prepared"
    prepared.prepare(mixed_folder, out, workers=1, progress=False)
    src = sources.make_source(_cfg(source="prepared", path=str(out), cache_mb=1024))
    img = src[0]
    assert not img.flags.writeable and not img.flags.owndata  # a view of the file mapping
    assert src._cache.get(0) is None  # nothing pinned in RAM


def _npy(tmp_path, shape, seed=0):
    path = tmp_path / "img.npy"
    np.save(path, _pattern(*shape[:2], seed))
    _, _, offset = prepared._npy_header(str(path))  # pylint: disable=protected-access
    return str(path), offset


@pytest.mark.parametrize("flips", [(h, v, t) for h in (0, 1) for v in (0, 1) for t in (0, 1)])
def test_mapped_span_is_the_byte_range_of_any_flipped_crop(tmp_path, flips):
    height, width, top, left, size = 50, 40, 7, 5, 9
    path, offset = _npy(tmp_path, (height, width))
    img = prepared.open_array(path, (height, width, 3), offset)
    view = img[top:top + size, left:left + size]
    h, v, t = flips
    view = view[:, ::-1] if h else view
    view = view[::-1] if v else view
    view = view.transpose(1, 0, 2) if t else view
    mapping, first, end = prepared.mapped_span(view)
    row = width * 3
    assert first == offset + top * row + left * 3
    assert end == offset + (top + size - 1) * row + (left + size) * 3
    np.testing.assert_array_equal(np.frombuffer(mapping, np.uint8)[first:end].reshape(-1)[:size * 3],
                                  img[top, left:left + size].reshape(-1))
    assert prepared.mapped_span(np.array(view)) is None  # a copy is not a view of the map
    assert prepared.mapped_span(np.zeros((4, 4, 3), np.uint8)[1:3]) is None


def test_will_need_reads_the_crops_rows_ahead_and_nothing_else(tmp_path):
    """On Linux, with the file's pages evicted, will_need brings exactly the pages of the
    crop's rows into the page cache (the memory-map itself reads nothing ahead)."""
    if not (hasattr(os, "posix_fadvise") and sys.platform.startswith("linux")):
        pytest.skip("needs Linux page-cache control")
    import mmap  # pylint: disable=import-outside-toplevel

    sys.path.insert(0, REPO)  # benchmarks/ is not installed
    from benchmarks.data import resident_pages as resident  # pylint: disable=import-outside-toplevel

    height, width, top, size = 600, 700, 250, 64   # 1.26 MB; the crop spans ~132 KB
    path, offset = _npy(tmp_path, (height, width))
    resident_pages = lambda: resident(path)
    if resident_pages() is None:
        pytest.skip("the page cache cannot be asked (mincore) here")

    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if len(resident_pages()):
        pytest.skip("this filesystem keeps the file in memory (e.g. tmpfs)")
    img = prepared.open_array(path, (height, width, 3), offset)
    crop = img[top:top + size, 100:100 + size][::-1].transpose(1, 0, 2)
    prepared.will_need(crop)
    first = offset + top * width * 3
    end = offset + (top + size - 1) * width * 3 + (100 + size) * 3
    expected = np.arange(first // mmap.PAGESIZE, -(-end // mmap.PAGESIZE))
    deadline = time.monotonic() + 10
    while len(resident_pages()) < len(expected) and time.monotonic() < deadline:
        time.sleep(0.01)   # the read is asynchronous
    np.testing.assert_array_equal(resident_pages(), expected)
    np.testing.assert_array_equal(np.array(crop), _pattern(height, width, 0)[
        top:top + size, 100:100 + size][::-1].transpose(1, 0, 2))
    np.testing.assert_array_equal(resident_pages(), expected)  # reading it read no more


def test_prepare_data_script_runs_in_parallel_and_reports(mixed_folder, tmp_path):
    out = tmp_path / "prepared"
    env = {**os.environ, "PYTHONPATH": REPO}
    cmd = [sys.executable, os.path.join(REPO, "scripts", "prepare_data.py"), "--input",
           str(mixed_folder), "--output", str(out), "--workers", "2", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "7 images (7 decoded, 0 reused)" in proc.stdout
    assert "1 skipped, 1 failed to decode" in proc.stdout
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert "already up to date" in proc.stdout
    bad = subprocess.run(cmd[:3] + [str(tmp_path / "nope")] + cmd[4:], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith("error: --input")


def test_training_loop_reads_prepared_data_and_logs_the_input_wait(mixed_folder, tmp_path,
                                                                   monkeypatch):
    out = tmp_path / "prepared"
    prepared.prepare(mixed_folder, out, workers=1, progress=False)
    spec = importlib.util.spec_from_file_location("teacher", os.path.join(REPO, "configs",
                                                                          "teacher.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("demo")
    c.model.update(dict(n_feats=8, n_blocks=1, n_resblocks=1))
    c.update(dict(batch_size=2, patch_size=32, total_steps=2, checkpoint_every_steps=2,
                  eval_every_steps=0, log_every_steps=1))
    c.data.update(dict(source="prepared", path=str(out), worker_threads=0))
    logged = {}
    monkeypatch.setattr(loop, "_log_scalars", lambda writer, step, scalars: logged.update(scalars))
    state = loop.train_and_evaluate(c, str(tmp_path / "run"), num_devices=1, progress=False)
    assert int(state.step) == 2
    assert logged["perf/input_wait_s"] >= 0 and 0 <= logged["perf/input_wait_fraction"] <= 1


def test_a_training_run_switches_between_folder_and_prepared_data_and_moved_data(
        mixed_folder, tmp_path):
    """A run started on the folder resumes on its prepared set, and on a moved copy of it
    (data.path changed): the parameters equal an uninterrupted run on the folder."""
    from test_train_loop import _assert_trees_equal, _config, _params  # pylint: disable=import-outside-toplevel

    out = tmp_path / "prepared"
    prepared.prepare(mixed_folder, out, workers=1, progress=False)
    folder = dict(source="folder", folder=str(mixed_folder), small_images="pad")
    run = lambda wd, steps, data: loop.train_and_evaluate(
        _config(total_steps=steps, checkpoint_every_steps=1, data=dict(
            _config().data.to_dict(), **data)), str(wd), num_devices=1, progress=False)
    run(tmp_path / "whole", 3, folder)
    run(tmp_path / "switched", 1, folder)
    run(tmp_path / "switched", 2, dict(source="prepared", path=str(out), small_images="pad"))
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    run(tmp_path / "switched", 3, dict(source="prepared", path=str(moved), small_images="pad"))
    _assert_trees_equal(_params(str(tmp_path / "whole")), _params(str(tmp_path / "switched")))
    with pytest.raises(ValueError, match=r"data.source \('folder' -> 'bundled'\)"):
        run(tmp_path / "switched", 4, dict(source="bundled"))


def test_data_benchmark_times_every_source_on_generated_images(tmp_path):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed
    from benchmarks import data as data_bench  # pylint: disable=import-outside-toplevel

    cfg = data_bench.DataBenchConfig(num_images=2, image_size=(60, 70), prepared_images=3,
                                     workdir=str(tmp_path), batch=4, patch=32, gan_patch=64,
                                     workers=("1t",), batches=1, warmup=1,
                                     prepare_workers=1)
    report = data_bench.run(cfg, log=lambda m: None)
    rows = {(r["source"], r["crop"]) for r in report["results"]}
    assert rows == {("folder uncached", "random"), ("folder cached", "random"),
                    ("tfds layout", "random"), ("prepared (2 images)", "random"),
                    ("prepared (2 images)", "pad_or_crop"), ("prepared (3 images)", "random"),
                    ("prepared (3 images)", "pad_or_crop")}
    assert all(r["patches_per_s"] > 0 for r in report["results"])
    sizes = report["sizes"]
    assert sizes["images"] == 2 and sizes["prepared_bytes"] > 2 * 60 * 70 * 3
    assert sizes["large_set_images"] == 3 and sizes["large_set_bytes"] > 3 * 60 * 70 * 3
    copies = sorted((tmp_path / "prepared_x3" / "arrays").iterdir())
    assert len(copies) == 3 and len({c.stat().st_ino for c in copies}) == 3  # distinct files
    cached = {(r["source"], r["crop"]): r["page_cache_before"] for r in report["results"]
              if "page_cache_before" in r}
    assert len(cached) == 4 and all(c is None or 0 <= c <= 1 for c in cached.values())
    if sys.platform.startswith("linux"):  # the small set is read into the cache first
        assert (cached[("prepared (2 images)", "random")]
                == cached[("prepared (2 images)", "pad_or_crop")] == 1.0)
    assert "prepared" in data_bench.format_table(report)


def test_a_run_started_on_the_folder_resumes_on_the_prepared_data(mixed_folder, tmp_path):
    out = tmp_path / "prepared"
    prepared.prepare(mixed_folder, out, workers=1, progress=False)
    make = lambda cfg: pipeline.create_train_iterator(cfg, batch_size=3, patch_size=32,
                                                      augment="dihedral", seed=1)
    folder_it = make(_cfg(source="folder", folder=str(mixed_folder)))
    next(folder_it)
    state = folder_it.get_state()
    expected = [next(folder_it)["hr"] for _ in range(3)]
    ready_it = make(_cfg(source="prepared", path=str(out)))
    ready_it.set_state(state)
    for a in expected:
        np.testing.assert_array_equal(a, next(ready_it)["hr"])
