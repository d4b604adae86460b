"""Every way a real image file carries pixels that matter (small generated files): each
is read as an image viewer shows it, or refused with one line naming file and reason."""

import io
import struct

import numpy as np
import png
import pytest
import tifffile
from PIL import Image, ImageCms

from kdsr_jax.data import images

RNG = np.random.default_rng(5)


def _rgb(h=8, w=10):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _full(path):
    rgb, alpha, depth = images.load_image_full(path)
    scale = 65535 if depth == 16 else 255
    to_int = lambda x: None if x is None else np.round(x.astype(np.float64) * scale).astype(int)  # noqa: E731
    return to_int(rgb), to_int(alpha), depth


# ------------------------------------------------------------------ PNG transparency


def test_rgb_png_with_a_trns_colour_gets_alpha(tmp_path):
    img = _rgb()
    img[2, 3] = img[5, 1] = (10, 20, 30)
    Image.fromarray(img).save(tmp_path / "t.png", transparency=(10, 20, 30))
    rgb, alpha, depth = _full(tmp_path / "t.png")
    assert depth == 8
    np.testing.assert_array_equal(rgb, img)
    np.testing.assert_array_equal(alpha == 0, np.all(img == (10, 20, 30), axis=-1))
    assert alpha.max() == 255


def test_gray_png_with_a_trns_value_gets_alpha(tmp_path):
    gray = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
    gray[0, 0] = 77
    Image.fromarray(gray, "L").save(tmp_path / "g.png", transparency=77)
    rgb, alpha, _ = _full(tmp_path / "g.png")
    np.testing.assert_array_equal(rgb, np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(alpha == 0, gray == 77)


@pytest.mark.parametrize("greyscale", [False, True])
def test_16bit_png_with_a_trns_colour_gets_alpha(tmp_path, greyscale):
    planes = 1 if greyscale else 3
    values = RNG.integers(0, 65536, (5, 6, planes), dtype=np.uint16)
    key = tuple(int(v) for v in values[1, 2])
    with open(tmp_path / "t16.png", "wb") as f:
        png.Writer(6, 5, bitdepth=16, greyscale=greyscale,
                   transparent=key[0] if greyscale else key).write(f, values.reshape(5, -1))
    rgb, alpha, depth = _full(tmp_path / "t16.png")
    assert depth == 16
    np.testing.assert_array_equal(rgb, np.broadcast_to(values, (5, 6, 3)) if greyscale
                                  else values)
    np.testing.assert_array_equal(alpha == 0, np.all(values == key, axis=-1))


@pytest.mark.parametrize("bitdepth", [1, 2, 4])
def test_low_bit_depth_gray_and_palette_pngs(tmp_path, bitdepth):
    levels = 2 ** bitdepth
    index = RNG.integers(0, levels, (5, 9), dtype=np.uint8)
    with open(tmp_path / "g.png", "wb") as f:
        png.Writer(9, 5, bitdepth=bitdepth, greyscale=True).write(f, index)
    expected = (index.astype(int) * 255) // (levels - 1)
    np.testing.assert_array_equal(images.load_image(tmp_path / "g.png"),
                                  np.repeat(expected[..., None], 3, -1))
    palette = [tuple(int(c) for c in RNG.integers(0, 256, 3)) + (255 if i else 0,)
               for i in range(levels)]
    with open(tmp_path / "p.png", "wb") as f:
        png.Writer(9, 5, bitdepth=bitdepth, palette=palette).write(f, index)
    rgb, alpha, _ = _full(tmp_path / "p.png")
    pal = np.array(palette)
    np.testing.assert_array_equal(rgb, pal[index][..., :3])
    np.testing.assert_array_equal(alpha, pal[index][..., 3])


@pytest.mark.parametrize("bitdepth", [8, 16])
@pytest.mark.parametrize("alpha", [False, True])
def test_interlaced_pngs(tmp_path, bitdepth, alpha):
    planes = 4 if alpha else 3
    values = RNG.integers(0, 2 ** bitdepth, (11, 13, planes)).astype(
        np.uint16 if bitdepth == 16 else np.uint8)
    with open(tmp_path / "i.png", "wb") as f:
        png.Writer(13, 11, bitdepth=bitdepth, greyscale=False, alpha=alpha,
                   interlace=True).write(
            f, values.reshape(11, -1))
    rgb, a, depth = _full(tmp_path / "i.png")
    assert depth == bitdepth
    np.testing.assert_array_equal(rgb, values[..., :3])
    if alpha:
        np.testing.assert_array_equal(a, values[..., 3])
    else:
        assert a is None


# ------------------------------------------------------------------ colour management


def _swapped_primaries_profile() -> bytes:
    """sRGB with its red and blue primaries exchanged (a valid ICC profile whose effect
    is unmistakable: a stored (255, 0, 0) displays as blue)."""
    b = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    n = struct.unpack(">I", b[128:132])[0]
    entries = {bytes(b[132 + 12 * i:136 + 12 * i]): 132 + 12 * i for i in range(n)}
    r, bl = entries[b"rXYZ"], entries[b"bXYZ"]
    b[r + 4:r + 12], b[bl + 4:bl + 12] = b[bl + 4:bl + 12], b[r + 4:r + 12]
    return bytes(b)


def _blocks(colours, size=16):
    return np.concatenate([np.tile(np.array(c, np.uint8), (size, size, 1)) for c in colours], 1)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tif"])
def test_icc_profile_is_applied(tmp_path, fmt):
    img = _blocks([(255, 0, 0), (0, 255, 0), (200, 100, 50)])
    kw = dict(quality=100, subsampling=0) if fmt == "jpg" else (
        dict(lossless=True) if fmt == "webp" else {})
    Image.fromarray(img).save(tmp_path / f"a.{fmt}", icc_profile=_swapped_primaries_profile(),
                              **kw)
    out = images.load_image(tmp_path / f"a.{fmt}").astype(int)
    expected = _blocks([(0, 0, 255), (0, 255, 0), (50, 100, 200)]).astype(int)
    assert np.abs(out[2:-2, 2:-2] - expected[2:-2, 2:-2]).max() <= 3


def test_rgba_with_icc_profile_keeps_alpha(tmp_path):
    img = np.concatenate([_blocks([(255, 0, 0)]), np.full((16, 16, 1), 128, np.uint8)], -1)
    Image.fromarray(img, "RGBA").save(tmp_path / "a.png",
                                      icc_profile=_swapped_primaries_profile())
    rgb, alpha, _ = _full(tmp_path / "a.png")
    assert tuple(rgb[0, 0]) == (0, 0, 255) and (alpha == 128).all()


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[..., 0], cmyk[..., 3] = 200, 30
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", quality=100)
    out = images.load_image(tmp_path / "c.jpg").astype(int)
    expected = np.asarray(Image.fromarray(cmyk, "CMYK").convert("RGB")).astype(int)
    assert np.abs(out - expected).max() <= 2


def test_ycck_jpeg_reads_as_rgb(tmp_path):
    """A YCCK JPEG (Adobe transform 2): colour stored as YCbCr of the CMY planes."""
    target = np.array([200, 40, 90, 30], np.uint8)
    ycc = np.asarray(Image.fromarray(np.tile(target[:3], (16, 16, 1)), "RGB")
                     .convert("YCbCr")).astype(int)
    raw = np.concatenate([255 - ycc, np.full((16, 16, 1), int(target[3]))], -1)
    buf = io.BytesIO()
    Image.fromarray(raw.astype(np.uint8), "CMYK").save(buf, "JPEG", quality=100)
    data = bytearray(buf.getvalue())
    i = data.find(b"Adobe")
    assert i > 0 and data[i + 11] == 0
    data[i + 11] = 2                                   # transform: YCCK
    (tmp_path / "y.jpg").write_bytes(bytes(data))
    with Image.open(tmp_path / "y.jpg") as im:
        assert im.mode == "CMYK"
    out = images.load_image(tmp_path / "y.jpg").astype(int)
    expected = np.asarray(Image.fromarray(np.tile(target, (16, 16, 1)), "CMYK")
                          .convert("RGB")).astype(int)
    assert np.abs(out - expected).max() <= 4


# ------------------------------------------------------------------ orientation, WebP


@pytest.mark.parametrize("fmt", ["png", "png16", "webp"])
def test_exif_orientation_of_png_and_webp_is_applied(tmp_path, fmt):
    img = np.zeros((4, 6, 3), np.uint8)
    img[0, 0] = 255                     # stored top-left; orientation 6 = rotate 90 cw
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"o.{'webp' if fmt == 'webp' else 'png'}"
    if fmt == "png16":
        im16 = img.astype(np.uint16) * 257
        with open(path, "wb") as f:
            png.Writer(6, 4, bitdepth=16, greyscale=False).write(f, im16.reshape(4, -1))
        data = path.read_bytes()          # insert an eXIf chunk before IEND
        raw = exif.tobytes()
        chunk = (struct.pack(">I", len(raw)) + b"eXIf" + raw
                 + struct.pack(">I", __import__("zlib").crc32(b"eXIf" + raw)))
        path.write_bytes(data[:-12] + chunk + data[-12:])
    else:
        Image.fromarray(img).save(path, exif=exif, **({"lossless": True} if fmt == "webp" else {}))
    out = images.load_image(path)
    assert out.shape == (6, 4, 3) and out[0, -1, 0] == 255 and out[0, 0, 0] == 0
    assert images.probe_image(path) == (6, 4)


def test_webp_with_alpha_keeps_alpha(tmp_path):
    img = np.concatenate([_rgb(), RNG.integers(0, 256, (8, 10, 1), dtype=np.uint8)], -1)
    Image.fromarray(img, "RGBA").save(tmp_path / "a.webp", lossless=True, exact=True)
    rgb, alpha, _ = _full(tmp_path / "a.webp")
    np.testing.assert_array_equal(rgb, img[..., :3])
    np.testing.assert_array_equal(alpha, img[..., 3])


def test_16bit_rgba_tiff_keeps_alpha_at_full_precision(tmp_path):
    values = RNG.integers(0, 65536, (5, 6, 4), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", values, photometric="rgb", extrasamples=["unassalpha"])
    rgb, alpha, depth = _full(tmp_path / "a.tif")
    assert depth == 16
    np.testing.assert_array_equal(rgb, values[..., :3])
    np.testing.assert_array_equal(alpha, values[..., 3])


# ------------------------------------------------------------------ multi-frame


def _frames():
    return [Image.fromarray(_rgb()) for _ in range(3)]


@pytest.mark.parametrize("fmt, kind", [("gif", "animated GIF"), ("png", "animated PNG"),
                                       ("webp", "animated WEBP"), ("tif", "multi-page TIFF")])
def test_multi_frame_files_are_refused_naming_the_file(tmp_path, fmt, kind):
    path = tmp_path / f"anim.{fmt}"
    first, *rest = _frames()
    first.save(path, save_all=True, append_images=rest)
    for fn in (images.load_image, images.load_image_full, images.probe_image):
        with pytest.raises(images.ImageError) as info:
            fn(path)
        msg = str(info.value)
        assert str(path) in msg and kind in msg and "3 frames" in msg and "\n" not in msg
    with pytest.raises(images.ImageError, match="3 frames"):
        images.decode_image_bytes(path.read_bytes(), "anim")


def test_single_frame_gif_reads(tmp_path):
    img = _rgb()
    Image.fromarray(img).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "one.gif")
    assert images.load_image(tmp_path / "one.gif").shape == (8, 10, 3)


def test_float_tiff_is_refused_in_one_line(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", RNG.random((4, 5)).astype(np.float32))
    with pytest.raises(images.ImageError) as info:
        images.load_image(tmp_path / "f.tif")
    assert str(tmp_path / "f.tif") in str(info.value) and "\n" not in str(info.value)


def test_16bit_png_bytes_decode_rounded_like_files(tmp_path):
    """decode_image_bytes (TFDS records) rounds 16-bit PNGs like load_image does."""
    values = RNG.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    values[0, 0] = 129 + 257 * 3                      # rounds to 4, its high byte is 3
    data = images.encode_png16(values)
    (tmp_path / "v.png").write_bytes(data)
    out = images.decode_image_bytes(data, "rec")
    np.testing.assert_array_equal(out, images.load_image(tmp_path / "v.png"))
    assert out[0, 0, 0] == 4
