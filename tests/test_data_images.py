"""Tests for kdsr_jax.data.images (file I/O) and kdsr_jax.data.samples (bundled photos)."""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from kdsr_jax.data import images, samples

RNG = np.random.default_rng(1234)


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def _paeth(a, b, c):
    p = a.astype(np.int32) + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)).astype(np.uint8)


def write_png16(path, values: np.ndarray) -> None:
    """Independent 16-bit PNG writer cycling through all five filter types by row."""
    if values.ndim == 2:
        values = values[..., None]
    height, width, channels = values.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = values.astype(">u2").view(np.uint8).reshape(height, -1)
    bpp = 2 * channels
    rows = []
    for y in range(height):
        cur = raw[y]
        prev = raw[y - 1] if y else np.zeros_like(cur)
        left = np.concatenate([np.zeros(bpp, np.uint8), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.uint8), prev[:-bpp]])
        ftype = y % 5
        predictor = [np.zeros_like(cur), left, prev,
                     ((left.astype(np.int32) + prev) // 2).astype(np.uint8),
                     _paeth(left, prev, upleft)][ftype]
        rows.append(bytes([ftype]) + (cur - predictor).astype(np.uint8).tobytes())
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"".join(rows))) + _chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(data)


def expected_8bit(values16: np.ndarray) -> np.ndarray:
    return np.round(values16.astype(np.float64) / 257.0).astype(np.uint8)


# ----------------------------------------------------------------------------- loading

def test_grayscale_png_is_replicated_to_three_equal_channels(tmp_path):
    gray = RNG.integers(0, 256, (9, 11), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = images.load_image(tmp_path / "g.png")
    assert out.dtype == np.uint8 and out.shape == (9, 11, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_png_drops_alpha_keeps_stored_colours_and_full_load_keeps_alpha(tmp_path):
    rgba = RNG.integers(0, 256, (7, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(images.load_image(tmp_path / "a.png"), rgba[..., :3])
    rgb, alpha, depth = images.load_image_full(tmp_path / "a.png")
    assert depth == 8 and rgb.dtype == np.float32 and alpha.dtype == np.float32
    np.testing.assert_allclose(rgb * 255, rgba[..., :3], atol=1e-3)
    np.testing.assert_allclose(alpha * 255, rgba[..., 3], atol=1e-3)


def test_gray_alpha_png_reads_gray_replicated_and_alpha(tmp_path):
    la = RNG.integers(0, 256, (6, 4, 2), dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = images.load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(out, np.repeat(la[..., :1], 3, axis=-1))
    _, alpha, _ = images.load_image_full(tmp_path / "la.png")
    np.testing.assert_allclose(alpha * 255, la[..., 1], atol=1e-3)


def test_palette_png_with_and_without_transparency_gives_palette_colours(tmp_path):
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    index = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(palette.reshape(-1).tolist())
    im.save(tmp_path / "p.png")
    im.save(tmp_path / "pt.png", transparency=int(index[0, 0]))
    for name in ("p.png", "pt.png"):
        np.testing.assert_array_equal(images.load_image(tmp_path / name), palette[index])
    assert images.load_image_full(tmp_path / "p.png")[1] is None
    alpha = images.load_image_full(tmp_path / "pt.png")[1]
    np.testing.assert_array_equal(alpha == 0, index == index[0, 0])


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_all_filters_reads_exact_values_and_rounds_to_8bit(tmp_path, channels):
    values = RNG.integers(0, 65536, (10, 7, channels), dtype=np.uint16)
    values[0, 0] = 128  # 0.498 -> 0 (truncating the high byte would agree; rounding too)
    values[0, 1] = 129 + 257 * 3  # 3.502 -> 4, whereas the high byte is 3
    write_png16(tmp_path / "v.png", values)
    rgb, alpha, depth = images.load_image_full(tmp_path / "v.png")
    assert depth == 16
    colour = values[..., :1].repeat(3, -1) if channels in (1, 2) else values[..., :3]
    np.testing.assert_array_equal(np.round(rgb.astype(np.float64) * 65535), colour)
    if channels in (2, 4):
        np.testing.assert_array_equal(np.round(alpha.astype(np.float64) * 65535), values[..., -1])
    else:
        assert alpha is None
    out8 = images.load_image(tmp_path / "v.png")
    assert out8.dtype == np.uint8
    np.testing.assert_array_equal(out8, expected_8bit(colour))
    assert out8[0, 1, 0] == 4


def test_16bit_rgb_tiff_reads_full_precision(tmp_path):
    tifffile = pytest.importorskip("tifffile")  # ships with scikit-image
    values = RNG.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", values, photometric="rgb")
    rgb, _, depth = images.load_image_full(tmp_path / "v.tif")
    assert depth == 16
    np.testing.assert_array_equal(np.round(rgb.astype(np.float64) * 65535), values)
    np.testing.assert_array_equal(images.load_image(tmp_path / "v.tif"), expected_8bit(values))


def test_jpeg_exif_orientation_is_applied(tmp_path):
    img = np.zeros((40, 60, 3), np.uint8)
    img[:10, :10] = 255  # bright top-left block, 40 rows x 60 cols as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; display = rotate 90 degrees clockwise
    Image.fromarray(img).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = images.load_image(tmp_path / "r.jpg")
    assert out.shape == (60, 40, 3)
    assert out[:10, -10:].mean() > 200 and out[:10, :10].mean() < 50  # now top-right
    assert images.probe_image(tmp_path / "r.jpg") == (60, 40)


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"),
                                     ("BMP", "bmp"), ("TIFF", "tif")])
def test_other_formats_load_as_uint8_rgb(tmp_path, fmt, ext):
    img = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / f"x.{ext}", fmt)
    out = images.load_image(tmp_path / f"x.{ext}")
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    if fmt in ("PNG", "BMP", "TIFF"):
        np.testing.assert_array_equal(out, img)


def _encoded(fmt: str) -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,cut", [("PNG", 20), ("PNG", 2), ("PNG", 3000), ("JPEG", 2),
                                     ("JPEG", 500)])
def test_truncated_file_raises_image_error_naming_the_file(tmp_path, fmt, cut):
    data = _encoded(fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[:-cut])
    with pytest.raises(images.ImageError) as info:
        images.load_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    with pytest.raises(images.ImageError):
        images.load_image_full(path)


def test_truncated_png_caught_by_header_probe(tmp_path):
    (tmp_path / "cut.png").write_bytes(_encoded("PNG")[:-20])
    with pytest.raises(images.ImageError, match="truncated"):
        images.probe_image(tmp_path / "cut.png")


@pytest.mark.parametrize("content", [b"", b"this is not an image\n", b"\x89PNG\r\n\x1a\n"])
def test_empty_or_non_image_file_raises_one_line_image_error(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(images.ImageError) as info:
        images.load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_file_and_folder_raise_image_error(tmp_path):
    with pytest.raises(images.ImageError, match="not a file"):
        images.load_image(tmp_path / "nope.png")
    with pytest.raises(images.ImageError, match="not a file"):
        images.load_image(tmp_path)


# ----------------------------------------------------------------------------- saving

@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_save_png_round_trips_to_nearest_level(tmp_path, bit_depth, with_alpha):
    rgb = RNG.random((9, 13, 3)).astype(np.float32)
    alpha = RNG.random((9, 13)).astype(np.float32) if with_alpha else None
    images.save_png(tmp_path / "o.png", rgb, alpha, bit_depth=bit_depth)
    back, back_alpha, depth = images.load_image_full(tmp_path / "o.png")
    levels = 2**bit_depth - 1
    assert depth == bit_depth
    np.testing.assert_array_equal(np.round(back * levels), np.round(rgb.astype(np.float64) * levels))
    if with_alpha:
        np.testing.assert_array_equal(np.round(back_alpha * levels),
                                      np.round(alpha.astype(np.float64) * levels))
    else:
        assert back_alpha is None
    with Image.open(tmp_path / "o.png") as im:  # a standard reader accepts it too
        im.load()
        assert im.size == (13, 9)


def test_save_png_clips_out_of_range_values(tmp_path):
    rgb = np.array([[[-0.5, 0.5, 1.5]]], np.float32)
    images.save_png(tmp_path / "c.png", rgb)
    np.testing.assert_array_equal(images.load_image(tmp_path / "c.png")[0, 0], [0, 128, 255])


def test_save_png_failure_leaves_old_file_and_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "keep.png"
    images.save_png(target, np.zeros((4, 4, 3), np.float32))
    before = target.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        images.save_png(target, np.ones((4, 4, 3), np.float32))
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.png"]


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_save_png_file_gets_the_umask_mode_not_a_private_temp_file_mode(tmp_path, bit_depth):
    previous = os.umask(0o027)
    try:
        images.save_png(tmp_path / "m.png", np.zeros((4, 4, 3), np.float32), bit_depth=bit_depth)
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "m.png").st_mode & 0o777 == 0o640


def test_save_png_writes_quantised_integer_pixels_as_they_are(tmp_path):
    rgb16 = RNG.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    alpha16 = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)
    images.save_png(tmp_path / "i16.png", rgb16, alpha16, bit_depth=16)
    back, back_alpha, depth = images.load_image_full(tmp_path / "i16.png")
    assert depth == 16
    np.testing.assert_array_equal(np.round(back * 65535), rgb16)
    np.testing.assert_array_equal(np.round(back_alpha * 65535), alpha16)
    rgb8 = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    images.save_png(tmp_path / "i8.png", rgb8)
    np.testing.assert_array_equal(images.load_image(tmp_path / "i8.png"), rgb8)
    with pytest.raises(ValueError, match="uint8"):
        images.save_png(tmp_path / "bad.png", rgb16)


def test_save_png_quantises_large_images_in_slices_like_one_pass(tmp_path, monkeypatch):
    rgb = RNG.random((40, 30, 3)).astype(np.float32)
    images.save_png(tmp_path / "whole.png", rgb, bit_depth=16)
    monkeypatch.setattr(images, "_QUANTIZE_CHUNK", 100)   # 2 rows per slice
    images.save_png(tmp_path / "sliced.png", rgb, bit_depth=16)
    assert (tmp_path / "sliced.png").read_bytes() == (tmp_path / "whole.png").read_bytes()
    np.testing.assert_array_equal(np.round(images.load_image_full(tmp_path / "sliced.png")[0]
                                           * 65535), np.round(rgb.astype(np.float64) * 65535))


def test_save_png_rejects_bad_shapes_and_depths(tmp_path):
    with pytest.raises(ValueError, match="bit_depth"):
        images.save_png(tmp_path / "x.png", np.zeros((2, 2, 3)), bit_depth=12)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        images.save_png(tmp_path / "x.png", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="alpha"):
        images.save_png(tmp_path / "x.png", np.zeros((2, 2, 3)), alpha=np.zeros((3, 2)))
    assert os.listdir(tmp_path) == []


def test_list_images_sorted_recursive_and_filtered_by_extension(tmp_path):
    for rel in ["b.png", "a.JPG", "sub/c.webp", "sub/deeper/d.tiff", "notes.txt", "e.bmp", "f.tif"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [os.path.relpath(p, tmp_path) for p in images.list_images(tmp_path)]
    assert found == ["a.JPG", "b.png", "e.bmp", "f.tif", "sub/c.webp", "sub/deeper/d.tiff"]
    flat = [os.path.relpath(p, tmp_path) for p in images.list_images(tmp_path, recursive=False)]
    assert flat == ["a.JPG", "b.png", "e.bmp", "f.tif"]
    with pytest.raises(images.ImageError, match="not a folder"):
        images.list_images(tmp_path / "missing")


# ----------------------------------------------------------------------------- samples

def test_bundled_split_is_disjoint_non_empty_and_covers_all():
    train = samples.bundled_paths("train")
    heldout = samples.bundled_paths("heldout")
    assert train and heldout
    assert not {n for n, _ in train} & {n for n, _ in heldout}
    assert samples.bundled_paths("all") == train + heldout
    with pytest.raises(ValueError, match="split"):
        samples.bundled_paths("test")


def test_bundled_heldout_photos_load_offline_as_uint8_rgb(tmp_path):
    loaded = samples.bundled_images("heldout")
    assert [n for n, _ in loaded] == [n for n, _ in samples.HELDOUT_PHOTOS]
    for _, img in loaded:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert min(img.shape[:2]) >= 256 and img.std() > 10  # a real photo, not blank
    paths = samples.export_bundled(tmp_path, "heldout")
    for (name, img), path in zip(loaded, paths):
        assert os.path.basename(path) == f"{name}.png"
        np.testing.assert_array_equal(images.load_image(path), img)


def test_every_bundled_file_exists_in_the_installed_package():
    for name, path in samples.bundled_paths("all"):
        assert os.path.isfile(path), name
        height, width = images.probe_image(path)
        assert min(height, width) >= 256, name
