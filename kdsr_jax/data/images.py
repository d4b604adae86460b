"""Image file input/output for HR training sources and the upscaler.

Reference: TRAINING.md §1.1 (classic data: uint8 RGB, grayscale replicated to 3 channels)
and §2.1 (GAN data: images read as 3-channel colour, alpha ignored). Decoding goes
through well-kept libraries: Pillow for 8-bit images, `pypng` for 16-bit PNGs and
`tifffile` (a scikit-image dependency) for 16-bit TIFFs, which Pillow would cut to 8 bits.

Every file is read as an image viewer shows it, or refused with a one-line `ImageError`
naming the file and the reason:

* transparency in every PNG form: RGBA / gray+alpha, a palette with tRNS, and the tRNS
  single transparent colour of RGB and gray PNGs (alpha 0 where the colour matches), in
  8 and 16 bits; WebP / TIFF alpha likewise;
* every PNG bit depth and colour type (1/2/4-bit gray and palette, 8- and 16-bit
  gray/RGB with or without alpha), interlaced (Adam7) or not;
* an embedded ICC profile is applied (8-bit images are converted to sRGB with LittleCMS
  through `PIL.ImageCms`, as colour-managed viewers do); 16-bit images keep their values;
* CMYK and YCCK JPEGs (and Adobe's inverted CMYK) become RGB, through their ICC profile
  when they carry one;
* EXIF orientation is applied (JPEG, PNG eXIf, WebP, TIFF);
* 16-bit -> 8-bit rounds to nearest (``round(v / 257)``), not truncation;
* truncated files are errors: Pillow's ``LOAD_TRUNCATED_IMAGES`` is never turned on
  here, and PNGs are additionally checked for a complete chunk sequence ending in IEND;
* multi-frame files (animated GIF / PNG / WebP, multi-page TIFF) are refused: which
  frame a user means cannot be guessed, and silently taking the first loses the rest.

Alpha: `load_image` DROPS the alpha channel and keeps the stored colour values (what
OpenCV's IMREAD_COLOR does on the GAN side, §2.1); it does not composite on a
background. `load_image_full` keeps alpha separately (the upscaler re-attaches it).
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import struct

import numpy as np
import png
import tifffile
from PIL import Image, ImageCms, ImageOps

from kdsr_jax import fileio

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GRAY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# Pillow raw modes of TIFF data with 16 bits per sample that Pillow keeps 8 of.
_TIFF16_RAWMODES = ("RGB;16B", "RGB;16L", "RGB;16N", "RGBA;16B", "RGBA;16L", "RGBA;16N",
                    "LA;16B", "LA;16L")
# Elements per slice when quantising large images piecewise (a float64 slice of this
# many values is 32 MB).
_QUANTIZE_CHUNK = 1 << 22
_SRGB = ImageCms.createProfile("sRGB")


class ImageError(ValueError):
    """An image file cannot be read (missing, empty, truncated, not an image, ...)."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _png_info(path: str) -> dict | None:
    """Walks a PNG's chunk list (headers only; IHDR and eXIf read): {'bit_depth',
    'exif'} or None if the file is not a PNG. Fails unless the list reaches IEND."""
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return None  # Not a PNG after all; Pillow decides.
        size = os.fstat(f.fileno()).st_size
        info = {"bit_depth": None, "exif": None}
        while True:
            header = f.read(8)
            if len(header) < 8:
                raise ImageError(f"{path}: truncated PNG (no IEND chunk)")
            length, ctype = struct.unpack(">I4s", header)
            end = f.tell() + length + 4  # data + CRC
            if end > size:
                raise ImageError(f"{path}: truncated PNG (chunk {ctype!r} cut off)")
            if ctype == b"IHDR" and length >= 9:
                info["bit_depth"] = f.read(9)[8]
            elif ctype == b"eXIf" and length < (1 << 20):
                info["exif"] = f.read(length)
            elif ctype == b"IEND":
                return info
            f.seek(end)


def _check_png_complete(path: str) -> None:
    _png_info(path)


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
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, struct.error,
            png.Error, tifffile.TiffFileError, ImageCms.PyCMSError) as exc:
        raise ImageError(f"{path}: cannot read image ({_one_line(exc)})") from None


def _refuse_multi_frame(im: Image.Image, path: str) -> None:
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        kind = {"TIFF": "multi-page TIFF"}.get(im.format, f"animated {im.format}")
        raise ImageError(f"{path}: {kind} with {frames} frames; only single images are "
                         "read (save the frame you want as its own file)")


def _orientation(im: Image.Image, png_exif: bytes | None) -> int:
    if png_exif:
        exif = Image.Exif()
        exif.load(png_exif)
        return int(exif.get(0x0112, 1) or 1)
    return int(im.getexif().get(0x0112, 1) or 1)


def _read_png16(path: str | None, data: bytes | None = None) -> np.ndarray:
    """16-bit PNG (a file, or its bytes) -> uint16 (H, W, C) through pypng, C = 1
    (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA); a tRNS colour becomes an alpha channel."""
    reader = png.Reader(filename=path) if data is None else png.Reader(bytes=data)
    width, height, rows, info = reader.asDirect()
    planes = info["planes"]
    out = np.empty((height, width * planes), np.uint16)
    for y, row in enumerate(rows):
        out[y] = row
    return out.reshape(height, width, planes)


def _read_tiff16(path: str) -> np.ndarray:
    """16-bit TIFF -> uint16 (H, W[, C]) through tifffile (first and only page)."""
    pixels = np.asarray(tifffile.imread(path, key=0))
    if pixels.dtype != np.uint16 or pixels.ndim not in (2, 3) or (
            pixels.ndim == 3 and pixels.shape[-1] not in (2, 3, 4)):
        raise ImageError(f"{path}: unsupported 16-bit TIFF layout {pixels.shape} "
                         f"{pixels.dtype}")
    return pixels


def _open_pixels(path: str) -> tuple[np.ndarray, int, Image.Image | None]:
    """Decodes `path` to (pixels, bit_depth, pil_image_for_8bit_or_None).

    For 16-bit files the pixels are a uint16 array (H,W), (H,W,1), (H,W,2), (H,W,3) or
    (H,W,4) (gray, gray+alpha, RGB, RGBA), EXIF-oriented. For 8-bit files the PIL image
    (EXIF-transposed, ICC-converted to sRGB, loaded) is returned for mode conversion.
    """
    path = os.fspath(path)
    with _open_checked(path) as im:
        _refuse_multi_frame(im, path)
        info = _png_info(path) if im.format == "PNG" else None
        if info is not None and info["bit_depth"] == 16:
            return _orient(_read_png16(path), _orientation(im, info["exif"])), 16, None
        rawmode = _tile_rawmode(im)
        if im.format == "TIFF" and (rawmode in _TIFF16_RAWMODES or im.mode in _GRAY16_MODES):
            return _orient(_read_tiff16(path), _orientation(im, None)), 16, None
        im.load()
        if im.mode in _GRAY16_MODES:
            pixels = np.clip(np.asarray(im).astype(np.int64), 0, 65535).astype(np.uint16)
            return _orient(pixels, _orientation(im, None)), 16, None
        out = _to_srgb(ImageOps.exif_transpose(im))
        if out is im:
            out = im.copy()
        return np.empty((0,)), 8, out


def _tile_rawmode(im: Image.Image) -> str | None:
    """The raw mode of the first tile Pillow would decode (how the file stores samples)."""
    if not getattr(im, "tile", None):
        return None
    args = im.tile[0][3]
    return args[0] if isinstance(args, tuple) and args else (args if isinstance(args, str) else None)


def _to_srgb(im: Image.Image) -> Image.Image:
    """Applies an embedded ICC profile (to sRGB), as a colour-managed viewer does. Images
    without one, or whose mode LittleCMS cannot convert, are returned as they are."""
    icc = im.info.get("icc_profile")
    if not icc:
        return im
    out_mode = {"RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB", "L": "RGB", "LA": "RGBA"}.get(im.mode)
    if out_mode is None:
        return im
    alpha = None
    src = im
    if im.mode in ("RGBA", "LA"):   # LittleCMS transforms colour; alpha is carried over
        alpha = im.getchannel("A")
        src = im.convert("RGB" if im.mode == "RGBA" else "L")
        out_mode = "RGB"
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    out = ImageCms.profileToProfile(src, profile, _SRGB, outputMode=out_mode)
    if alpha is not None:
        out.putalpha(alpha)
    out.info = {k: v for k, v in im.info.items() if k != "icc_profile"}
    return out


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
    """8-bit PIL image -> (uint8 (H,W,3), uint8 (H,W) alpha or None). A tRNS
    transparent colour (palette, RGB or gray PNG) becomes an alpha channel."""
    mode = im.mode
    has_trns = "transparency" in im.info
    if mode in ("P", "1", "L", "RGB") and has_trns:
        im = im.convert("RGBA")
    elif mode in ("P", "1", "L", "RGB"):
        im = im.convert("RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
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
        pixels = pixels[..., None]
    channels = pixels.shape[-1]
    if channels == 1:
        return np.repeat(pixels, 3, axis=-1), None
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


def encode_png16(pixels: np.ndarray, compress_level: int = 6) -> bytes:
    """Encodes uint16 (H,W,3) RGB or (H,W,4) RGBA as a 16-bit PNG with pypng (rows
    handed over a slice at a time, so memory beyond the input is about one slice plus
    the compressed output)."""
    buf = io.BytesIO()
    _write_png16(buf, pixels, compress_level)
    return buf.getvalue()


def _write_png16(f, pixels: np.ndarray, compress_level: int = 6) -> None:
    height, width, channels = pixels.shape
    if channels not in (3, 4):
        raise ValueError(f"expected (H, W, 3) or (H, W, 4) pixels, got {pixels.shape}")
    writer = png.Writer(width, height, bitdepth=16, greyscale=False, alpha=channels == 4,
                        compression=compress_level)
    step = max(1, _QUANTIZE_CHUNK // max(1, width * channels))

    def rows():
        for r in range(0, height, step):
            yield from np.asarray(pixels[r:r + step], np.uint16).reshape(-1, width * channels)

    writer.write(f, rows())


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
        fileio.atomic_write(path, lambda f: _write_png16(f, pixels, compress_level))
    else:
        im = Image.fromarray(pixels, "RGBA" if alpha is not None else "RGB")
        fileio.atomic_write(path, lambda f: im.save(f, format="PNG", compress_level=compress_level))


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

    Catches empty, non-image, multi-frame and (for PNG) truncated files cheaply; a JPEG
    truncated in its pixel data is only caught when decoded (`load_image`). The size is
    the displayed one (EXIF orientation applied, also a PNG's eXIf chunk).
    """
    path = os.fspath(path)
    with _open_checked(path) as im:
        _refuse_multi_frame(im, path)
        width, height = im.size
        if im.format == "PNG":   # read eXIf from the chunk list: Pillow would decode all
            orientation = _orientation(im, (_png_info(path) or {}).get("exif"))
        else:
            orientation = _orientation(im, None)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        return height, width


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decodes an encoded image (PNG/JPEG/...) held in memory to uint8 RGB (H, W, 3)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            _refuse_multi_frame(im, name)
            if im.format == "PNG" and data[24:25] == b"\x10":   # IHDR bit depth 16
                rgb, _ = _split16(_orient(_read_png16(None, data), _orientation(im, None)))
                return np.ascontiguousarray(to_uint8_from_16(rgb))
            im.load()
            if im.mode in _GRAY16_MODES:
                gray = np.clip(np.asarray(im).astype(np.int64), 0, 65535).astype(np.uint16)
                return to_uint8_from_16(np.repeat(gray[..., None], 3, axis=-1))
            rgb, _ = _pil_to_rgba8(_to_srgb(ImageOps.exif_transpose(im)), name)
            return np.ascontiguousarray(rgb)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            ImageCms.PyCMSError, png.Error) as exc:
        raise ImageError(f"{name}: cannot decode image ({_one_line(exc)})") from None
