"""Image file input/output for HR training sources and the upscaler.

Reference: TRAINING.md §1.1 (classic data: uint8 RGB, grayscale replicated to 3 channels)
and §2.1 (GAN data: images read as 3-channel colour, alpha ignored). All decoding goes
through Pillow; this module adds what Pillow does not do on its own:

* 16-bit RGB / RGBA / gray+alpha PNGs (and raw 16-bit RGB TIFFs) are read at full
  precision. Pillow stores these in 8-bit modes by keeping only the high byte; we
  decode the file a second time with the byte order of the raw mode swapped, which
  yields the low bytes through Pillow's own (C) PNG unfiltering, and recombine.
* 16-bit -> 8-bit conversion rounds to nearest (``round(v / 257)``), not truncation.
* Truncated files are errors: Pillow's ``LOAD_TRUNCATED_IMAGES`` is never turned on
  here, and PNGs are additionally checked for a complete chunk sequence ending in IEND
  (Pillow accepts a PNG whose last IDAT bytes / IEND are cut off).
* EXIF orientation is applied (cameras store JPEGs rotated with an orientation tag).

Alpha: `load_image` DROPS the alpha channel and keeps the stored colour values (what
OpenCV's IMREAD_COLOR does on the GAN side, §2.1); it does not composite on a
background. Palette images with transparency are expanded to RGBA first, so their
colours are the palette colours. `load_image_full` keeps alpha separately.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import secrets
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow raw modes of multi-channel 16-bit data whose high byte only is kept, mapped to
# the raw mode that returns the LOW bytes through the same unfiltering/unpacking path.
_LOW_BYTE_RAWMODE = {
    "RGB;16B": "RGB;16L",
    "RGB;16L": "RGB;16B",
    "RGBA;16B": "RGBA;16L",
    "RGBA;16L": "RGBA;16B",
}
# 16-bit gray+alpha PNG (4 bytes/pixel): decoding as raw 8-bit RGBA gives the bytes
# (L_hi, L_lo, A_hi, A_lo) with the same bytes-per-pixel, so filters stay correct.
_LA16_RAWMODE = "LA;16B"
_GRAY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# Elements per slice when quantising / PNG-filtering large images piecewise (a float64
# slice of this many values is 32 MB).
_QUANTIZE_CHUNK = 1 << 22


class ImageError(ValueError):
    """An image file cannot be read (missing, empty, truncated, not an image, ...)."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_png_complete(path: str) -> None:
    """Walks the PNG chunk list (headers only) and fails unless it reaches IEND."""
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return  # Not a PNG after all; Pillow decides.
        size = os.fstat(f.fileno()).st_size
        while True:
            header = f.read(8)
            if len(header) < 8:
                raise ImageError(f"{path}: truncated PNG (no IEND chunk)")
            length, ctype = struct.unpack(">I4s", header)
            end = f.tell() + length + 4  # data + CRC
            if end > size:
                raise ImageError(f"{path}: truncated PNG (chunk {ctype!r} cut off)")
            if ctype == b"IEND":
                return
            f.seek(end)


def _swap_rawmode(im: Image.Image, rawmode: str) -> None:
    tiles = []
    for tile in im.tile:
        args = tile[3]
        new_args = (rawmode,) + tuple(args[1:]) if isinstance(args, tuple) else rawmode
        if hasattr(tile, "_replace"):
            tiles.append(tile._replace(args=new_args))
        else:
            tiles.append((tile[0], tile[1], tile[2], new_args))
    im.tile = tiles


def _tile_rawmode(im: Image.Image) -> str | None:
    if not getattr(im, "tile", None):
        return None
    args = im.tile[0][3]
    return args[0] if isinstance(args, tuple) and args else (args if isinstance(args, str) else None)


def _decode_with_rawmode(path: str, rawmode: str) -> np.ndarray:
    with Image.open(path) as im:
        _swap_rawmode(im, rawmode)
        im.load()
        return np.asarray(im)


@contextlib.contextmanager
def _open_checked(path: str):
    """`Image.open(path)` after the cheap checks (a non-empty file; a PNG's chunks
    complete up to IEND). Any read error, also in the body of the `with`, becomes a
    one-line `ImageError` naming the file."""
    if not os.path.isfile(path):
        raise ImageError(f"{path}: not a file")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{path}: empty file")
    try:
        _check_png_complete(path)
        with Image.open(path) as im:
            yield im
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, struct.error) as exc:
        raise ImageError(f"{path}: cannot read image ({_one_line(exc)})") from None


def _open_pixels(path: str) -> tuple[np.ndarray, int, Image.Image | None]:
    """Decodes `path` to (pixels, bit_depth, pil_image_for_8bit_or_None).

    For 16-bit files the pixels are a uint16 array (H,W), (H,W,2), (H,W,3) or (H,W,4)
    (gray, gray+alpha, RGB, RGBA). For 8-bit files the PIL image (already EXIF-
    transposed and loaded) is returned for mode conversion.
    """
    path = os.fspath(path)
    with _open_checked(path) as im:
        rawmode = _tile_rawmode(im)
        exif_orientation = im.getexif().get(0x0112, 1)
        if rawmode in _LOW_BYTE_RAWMODE:
            im.load()
            high = np.asarray(im).astype(np.uint16)
            low = _decode_with_rawmode(path, _LOW_BYTE_RAWMODE[rawmode]).astype(np.uint16)
            pixels = (high << 8) | low
            return _orient(pixels, exif_orientation), 16, None
        if rawmode == _LA16_RAWMODE:
            raw = _decode_with_rawmode(path, "RGBA").astype(np.uint16)  # (H,W,4) bytes
            pixels = np.stack([(raw[..., 0] << 8) | raw[..., 1],
                               (raw[..., 2] << 8) | raw[..., 3]], axis=-1)
            return _orient(pixels, exif_orientation), 16, None
        im.load()
        if im.mode in _GRAY16_MODES:
            pixels = np.clip(np.asarray(im).astype(np.int64), 0, 65535).astype(np.uint16)
            return _orient(pixels, exif_orientation), 16, None
        out = ImageOps.exif_transpose(im)
        if out is im:
            out = im.copy()
        return np.empty((0,)), 8, out


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Applies an EXIF orientation tag (1..8) to an (H, W, ...) array."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.swapaxes(a, 0, 1)[::-1],
    }
    op = ops.get(int(orientation) if orientation else 1)
    return np.ascontiguousarray(op(pixels)) if op else pixels


def _pil_to_rgba8(im: Image.Image, path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """8-bit PIL image -> (uint8 (H,W,3), uint8 (H,W) alpha or None)."""
    mode = im.mode
    if mode == "P":
        has_alpha = "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("1", "L", "RGB"):
        im = im.convert("RGB")
    elif mode in ("LA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "RGBX", "HSV", "LAB"):
        im = im.convert("RGB")
    elif mode != "RGBA":
        raise ImageError(f"{path}: unsupported pixel mode {mode!r}")
    arr = np.asarray(im)
    if arr.shape[-1] == 4:
        return np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3])
    return arr, None


def _split16(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """uint16 (H,W[,C]) -> (uint16 (H,W,3), uint16 (H,W) alpha or None)."""
    if pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=-1), None
    channels = pixels.shape[-1]
    if channels == 2:  # gray + alpha
        return np.repeat(pixels[..., :1], 3, axis=-1), pixels[..., 1]
    if channels == 4:
        return pixels[..., :3], pixels[..., 3]
    return pixels, None


def to_uint8_from_16(values: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit with rounding to nearest: round(v / 257) (never a tie)."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def load_image(path) -> np.ndarray:
    """Reads an image file as uint8 RGB (H, W, 3).

    Grayscale is replicated to 3 channels, alpha is dropped (stored colours kept),
    16-bit samples are rounded to 8 bits, EXIF orientation is applied. Raises
    `ImageError` (a ValueError) naming the file if it cannot be read completely.
    """
    pixels, depth, im = _open_pixels(path)
    if depth == 16:
        rgb, _ = _split16(pixels)
        return np.ascontiguousarray(to_uint8_from_16(rgb))
    rgb, _ = _pil_to_rgba8(im, os.fspath(path))
    return np.ascontiguousarray(rgb)


def load_image_full(path) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Reads an image keeping alpha and 16-bit precision (for the upscaler).

    Returns (rgb float32 [0,1] (H,W,3), alpha float32 [0,1] (H,W) or None, bit_depth
    8 or 16).
    """
    pixels, depth, im = _open_pixels(path)
    if depth == 16:
        rgb, alpha = _split16(pixels)
        scale = np.float32(1.0 / 65535.0)
    else:
        rgb, alpha = _pil_to_rgba8(im, os.fspath(path))
        scale = np.float32(1.0 / 255.0)
    rgb = rgb.astype(np.float32) * scale
    if alpha is not None:
        alpha = alpha.astype(np.float32) * scale
    return rgb, alpha, depth


def _quantize(x: np.ndarray, maxval: int, dtype) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.floor(np.clip(x, 0.0, 1.0) * maxval + 0.5).astype(dtype)


def _fill_quantized(dst: np.ndarray, src, maxval: int, what: str) -> None:
    """dst[...] = src rounded to `maxval` levels. Float sources (in [0, 1], clipped) are
    quantised a few rows at a time, so no full-size float64 copy is ever made; integer
    sources must already have dst's dtype and are copied as they are."""
    src = np.asarray(src)
    if src.dtype.kind in "ui":
        if src.dtype != dst.dtype:
            raise ValueError(f"{what}: integer pixels must be {dst.dtype.name} for a "
                             f"{dst.dtype.itemsize * 8}-bit PNG, got {src.dtype.name}")
        dst[...] = src
        return
    rows = max(1, _QUANTIZE_CHUNK // max(1, src[0].size))
    for r in range(0, src.shape[0], rows):
        dst[r:r + rows] = _quantize(src[r:r + rows], maxval, dst.dtype)


def _png_chunk(ctype: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(ctype + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", crc)


def encode_png16(pixels: np.ndarray, compress_level: int = 6) -> bytes:
    """Encodes uint16 (H,W,3) RGB or (H,W,4) RGBA as a 16-bit PNG (Sub filter, zlib).
    Rows are filtered and compressed in chunks: memory beyond the input is about one
    chunk plus the compressed output."""
    height, width, channels = pixels.shape
    color_type = {3: 2, 4: 6}[channels]
    bpp = channels * 2
    compressor = zlib.compressobj(compress_level)
    idat = []
    step = max(1, _QUANTIZE_CHUNK // (width * bpp))
    for r in range(0, height, step):
        raw = pixels[r:r + step].astype(">u2").view(np.uint8).reshape(-1, width * bpp)
        filtered = raw.copy()
        filtered[:, bpp:] = raw[:, bpp:] - raw[:, :-bpp]  # "Sub" filter, uint8 wrap-around
        rows = np.concatenate([np.ones((len(raw), 1), np.uint8), filtered], axis=1)  # type 1
        idat.append(compressor.compress(rows.tobytes()))
    idat.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", b"".join(idat)) + _png_chunk(b"IEND", b""))


def _create_temp(folder: str) -> tuple[int, str]:
    """A new, exclusively created temporary file in `folder`, opened for writing. Unlike
    `tempfile.mkstemp` (always 0600) it is created with mode 0666, so the process umask
    gives it the mode any newly written file gets, which survives the rename."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".tmp-{secrets.token_hex(8)}.png")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: cannot create a temporary file")


def _atomic_write(path: str, write) -> None:
    fd, tmp = _create_temp(os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_png(path, rgb, alpha=None, bit_depth: int = 8, compress_level: int = 6) -> None:
    """Writes RGB (H,W,3) (+ optional alpha (H,W)) as an 8- or 16-bit PNG.

    Float values (any float dtype) are clipped to [0,1] and rounded to nearest, a few
    rows at a time (no full-size float64 copy). Integer arrays are taken as already
    quantised pixels and must be uint8 for `bit_depth=8`, uint16 for 16.
    `compress_level`: zlib level 0-9 (1 = fast, larger files). The file appears
    atomically: it is written to a temporary file in the same folder and renamed over
    `path`; its mode is the usual one for new files (0666 minus the umask).
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected RGB of shape (H, W, 3), got {rgb.shape}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"alpha shape {alpha.shape} does not match image {rgb.shape[:2]}")
    maxval, dtype = (65535, np.uint16) if bit_depth == 16 else (255, np.uint8)
    if alpha is None and rgb.dtype == dtype:
        pixels = np.ascontiguousarray(rgb)        # already quantised: no copy
    else:
        pixels = np.empty(rgb.shape[:2] + (3 if alpha is None else 4,), dtype)
        _fill_quantized(pixels[..., :3], rgb, maxval, "rgb")
        if alpha is not None:
            _fill_quantized(pixels[..., 3], alpha, maxval, "alpha")
    path = os.fspath(path)
    if bit_depth == 16:
        data = encode_png16(pixels, compress_level)
        _atomic_write(path, lambda f: f.write(data))
    else:
        im = Image.fromarray(pixels, "RGBA" if alpha is not None else "RGB")
        _atomic_write(path, lambda f: im.save(f, format="PNG", compress_level=compress_level))


def list_images(folder, recursive: bool = True) -> list[str]:
    """Image files under `folder` (by extension, case-insensitive), sorted by relative path."""
    root = pathlib.Path(folder)
    if not root.is_dir():
        raise ImageError(f"{folder}: not a folder")
    candidates = root.rglob("*") if recursive else root.iterdir()
    found = [p for p in candidates if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return [str(p) for p in sorted(found, key=lambda p: p.relative_to(root).as_posix())]


def probe_image(path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels.

    Catches empty, non-image and (for PNG) truncated files cheaply; a JPEG truncated
    in its pixel data is only caught when decoded (`load_image`).
    """
    path = os.fspath(path)
    with _open_checked(path) as im:
        width, height = im.size
        # PNG EXIF may follow the pixel data (Pillow then decodes everything to find
        # it); orientation there is rare, so PNG sizes are taken as stored.
        if im.format != "PNG" and im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            width, height = height, width
        return height, width


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decodes an encoded image (PNG/JPEG/...) held in memory to uint8 RGB (H, W, 3)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in _GRAY16_MODES:
                gray = np.clip(np.asarray(im).astype(np.int64), 0, 65535).astype(np.uint16)
                return to_uint8_from_16(np.repeat(gray[..., None], 3, axis=-1))
            rgb, _ = _pil_to_rgba8(ImageOps.exif_transpose(im), name)
            return np.ascontiguousarray(rgb)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: cannot decode image ({_one_line(exc)})") from None
