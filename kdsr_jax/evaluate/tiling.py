"""Exact inference on padded canvases and tiles (for the benchmark protocol and the
upscaler; the network facts used here are those of `kdsr_jax.models.kdsr`).

Why not "pad with reflect and crop": every conv of G and E zero-pads at the image border
(official `default_conv`, `IDR_DDC`) and KD-IDE ends in a global average pool, so a
forward on a reflect- or replicate-padded canvas differs from the unpadded forward near
all borders (and in the IDR) — no crop removes that, since G's receptive field is
2N + 4 LR pixels (110 for KDSRs-M).

What we do instead — *masked canvas execution*: the image sits in the top-left corner
of a larger canvas (sizes bucketed to a multiple of `bucket`, so a whole benchmark
compiles a handful of shapes, never one per image). A Flax method interceptor
(`flax.linen.intercept_methods`, public API) multiplies every feature map that enters
or leaves any submodule by a 0/1 mask of the valid region (scaled to the map's
resolution: LR, 2x, 4x, ...). Every conv therefore sees zeros outside the image, which
is exactly zero padding at the true border, and the valid region of every activation
equals the unpadded forward. For the global pool, the last feature map before the
encoder's first vector layer is masked as well (LReLU(0) = 0), so the canvas mean is
`sum(valid) / (H W)`; the interceptor rescales it by `H W / (h w)` at the first
vector-valued module call (the MLP). G runs through `kdsr_jax.inference.generate` with
the images' valid sizes, which applies the same masks (on CPU on the strip-packed
layout, with both cores busy). `tests/test_evaluate_tiling.py` proves the result equals
the unpadded forward within 1e-5, image by image, for several sizes in one batch.

Tiles (for large images, memory bounded by the tile size):
* IDR computed ONCE for the whole image, exactly: the encoder runs on tiles whose
  overlap is its receptive field (2R + 4 LR px); the last pre-pool map is masked to
  the tile's core, so each tile contributes the sum over its own core; the sums add
  up to the whole-image pool, which is fed through the MLP head (interceptor replaces
  the pooled vector on a small dummy canvas).
* G then runs per tile with that IDR (`apply(..., method="generate")`, G only),
  window = core + `tile_pad` context on each side (windows are shifted inwards at the
  image border, so every window has the same shape: one compilation). The cores are
  pasted together. With `tile_pad` >= G's receptive field (2N + 4) the result equals
  the untiled output (up to float rounding); below it, tiles differ only by the usual
  far-context truncation, never by seams from padding (borders are true image borders).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdsr_jax import inference

# Smallest canvas side: keeps feature maps distinguishable from small kernels/vectors.
MIN_CANVAS = 16
DEFAULT_BUCKET = 32
# Auto tile size (see `auto_tile_size`): fraction of free memory given to activations,
# live float buffers assumed per HR-resolution activation, and the clamp on the side.
TILE_MEMORY_FRACTION = 0.25
TILE_LIVE_BUFFERS = 6
TILE_MIN, TILE_MAX, TILE_ALIGN = 64, 1024, 32


class TeacherNeedsHRError(ValueError):
    """A teacher model was given for inference on LR images only."""


def round_up(n: int, m: int) -> int:
    return max(MIN_CANVAS, -(-int(n) // m) * m)


def generator_receptive_radius(spec) -> int:
    """G's receptive radius in LR pixels: head conv, 2 convs per IDR-DCRB, body conv,
    and the upsampler/tail convs (which together reach less than 2 LR px) — 2N + 4."""
    return 2 * spec.n_blocks + 4


def encoder_receptive_radius(spec) -> int:
    """E's receptive radius before the pool: stem conv, 2 per ResBlock, 3 widening
    convs of KD-IDE — 2R + 4."""
    return 2 * spec.n_resblocks + 4


# ------------------------------------------------------------------ the interceptor --

@dataclasses.dataclass
class _MaskState:
    """Trace-time state of one masked call (lives only while a function is traced)."""

    canvas_hw: tuple[int, int]
    valid: Any                      # (B, 4) int32 rect (y0, y1, x0, x1) in LR px
    core: Any = None                # (B, 4) rect that the pool sums over (default valid)
    pool: str | None = None         # None | 'rescale' | 'replace' | 'record'
    pool_index: int | None = None   # which feature-map output gets the core mask
    replacement: Any = None         # pooled vector for pool='replace'
    n_out: int = 0
    pool_seen: bool = False
    pool_sum: Any = None            # (B, K) sum over the core, captured at the pool
    recorded_index: int | None = None

    def factor(self, x) -> int | None:
        if not hasattr(x, "ndim") or x.ndim != 4 or not jnp.issubdtype(x.dtype, jnp.floating):
            return None
        hh, ww = self.canvas_hw
        h, w = x.shape[1:3]
        if h < hh or h % hh or w % ww or h // hh != w // ww:
            return None
        return h // hh

    def mask(self, x, rect):
        f = self.factor(x)
        if f is None:
            return x
        ys = jnp.arange(x.shape[1])[None, :]
        xs = jnp.arange(x.shape[2])[None, :]
        my = (ys >= rect[:, 0:1] * f) & (ys < rect[:, 1:2] * f)      # (B, H)
        mx = (xs >= rect[:, 2:3] * f) & (xs < rect[:, 3:4] * f)      # (B, W)
        m = (my[:, :, None] & mx[:, None, :])[..., None]
        return x * m.astype(x.dtype)

    def interceptor(self, next_fun, args, kwargs, context):
        if context.method_name == "setup":
            return next_fun(*args, **kwargs)
        args = [self.mask(a, self.valid) for a in args]
        if self.pool is not None and not self.pool_seen:
            for i, a in enumerate(args):
                if hasattr(a, "ndim") and a.ndim == 2 and jnp.issubdtype(a.dtype, jnp.floating):
                    self.pool_seen = True
                    self.recorded_index = self.n_out - 1
                    args[i] = self._pooled(a)
                    break
        out = next_fun(*args, **kwargs)
        if self.factor(out) is not None:
            rect = self.core if (self.n_out == self.pool_index and self.core is not None) \
                else self.valid
            out = self.mask(out, rect)
            self.n_out += 1
        return out

    def _pooled(self, mean_over_canvas):
        hh, ww = self.canvas_hw
        core = self.valid if self.core is None else self.core
        area = ((core[:, 1] - core[:, 0]) * (core[:, 3] - core[:, 2])).astype(jnp.float32)
        total = mean_over_canvas.astype(jnp.float32) * float(hh * ww)
        self.pool_sum = total
        if self.pool == "rescale":
            return (total / area[:, None]).astype(mean_over_canvas.dtype)
        if self.pool == "replace":
            return self.replacement.astype(mean_over_canvas.dtype)
        return mean_over_canvas


@contextlib.contextmanager
def _masked(state: _MaskState):
    """Masked canvas execution of the modules, with the CPU's strip-packed convolutions
    (`inference.strip_packed_convs`, a no-op elsewhere) outside the masking interceptor,
    so that the masks see each conv call exactly once."""
    with contextlib.ExitStack() as stack:
        if inference.packing_pays():
            stack.enter_context(inference.strip_packed_convs())
        stack.enter_context(nn.intercept_methods(state.interceptor))
        yield


def _rects(valid_hw) -> jax.Array:
    v = jnp.asarray(valid_hw, jnp.int32).reshape(-1, 2)
    z = jnp.zeros_like(v[:, 0])
    return jnp.stack([z, v[:, 0], z, v[:, 1]], axis=1)


# ------------------------------------------------------------------------ the runner --

class Runner:
    """Jitted, masked inference for one model. Inputs are NHWC float32 in [0, 1].

    * `encode_canvas(lr, valid_hw, hr=None)` -> (idr, fea) of each image in the canvas
      batch (valid_hw (B, 2) = true LR sizes, images at the top-left).
    * `generate_canvas(lr, valid_hw, idr)` -> SR canvas (crop `scale * valid`).
    * `forward(images, hrs=None, bucket, batch_size)` -> list of SR images, bucketed.
    * `upscale(image, tile, tile_pad)` -> one SR image, tiled when larger than a tile.
    Students only, except `encode_canvas/forward` with HR for a teacher.
    """

    def __init__(self, model, variables, dtype=jnp.float32):
        self.spec = model.spec
        if self.spec.kind == "discriminator":
            raise ValueError("a discriminator checkpoint cannot upscale images")
        self.model = model if jnp.dtype(model.dtype) == jnp.dtype(dtype) else model.clone(
            dtype=dtype)
        self.variables = {"params": variables["params"]}
        self.scale = self.spec.scale
        self.is_teacher = self.spec.kind == "teacher"
        self._pool_index = None
        self._encode_jit = jax.jit(self._encode_impl, static_argnames=("mode",))
        self._generate_jit = jax.jit(self._generate_impl)

    # -- traced bodies --
    def _encode_args(self, lr, hr):
        return (lr,) if hr is None else (lr, hr)

    def _encode_impl(self, variables, lr, valid, core, hr=None, replacement=None,
                     mode="rescale"):
        st = _MaskState(lr.shape[1:3], valid, core=core, pool=mode,
                        pool_index=self._pool_index, replacement=replacement)
        with _masked(st):
            idr, fea = self.model.apply(variables, *self._encode_args(lr, hr), method="encode")
        return idr, fea, st.pool_sum

    def _generate_impl(self, variables, lr, valid, idr):
        # G through `inference.generate`: on CPU the strip-packed formulation, masked to
        # each image's valid region like the modules here.
        sr = inference.generate(self.model, variables, lr, idr, valid_hw=valid[:, 1::2])
        return sr.astype(jnp.float32)

    def _find_pool_index(self, lr, hr):
        """Index of the last feature map produced before the encoder's pool (found
        once by tracing the encoder abstractly)."""
        if self._pool_index is None:
            small = jnp.zeros((1, MIN_CANVAS, MIN_CANVAS, 3), jnp.float32)
            small_hr = None if hr is None else jnp.zeros(
                (1, MIN_CANVAS * self.scale, MIN_CANVAS * self.scale, 3), jnp.float32)
            st = _MaskState((MIN_CANVAS, MIN_CANVAS), _rects([[MIN_CANVAS, MIN_CANVAS]]),
                            pool="record")

            def probe(v):
                with _masked(st):
                    return self.model.apply(v, *self._encode_args(small, small_hr),
                                            method="encode")

            jax.eval_shape(probe, self.variables)
            if st.recorded_index is None or st.recorded_index < 0:
                raise RuntimeError("could not locate the encoder's pooling layer")
            self._pool_index = st.recorded_index
            self._encode_jit = jax.jit(self._encode_impl, static_argnames=("mode",))

    def _check_hr(self, hr):
        if self.is_teacher and hr is None:
            raise TeacherNeedsHRError(
                "this checkpoint is a KDSR teacher: it needs the HR image as a second "
                "input; use a student checkpoint for inference on LR images")
        if not self.is_teacher and hr is not None:
            hr = None
        return hr

    # -- public --
    def encode_canvas(self, lr, valid_hw, hr=None, core=None):
        hr = self._check_hr(hr)
        self._find_pool_index(lr, hr)
        valid = _rects(valid_hw)
        core = valid if core is None else jnp.asarray(core, jnp.int32)
        idr, fea, _ = self._encode_jit(self.variables, jnp.asarray(lr), valid, core,
                                       None if hr is None else jnp.asarray(hr),
                                       mode="rescale")
        return idr, fea

    def encode_pool_sum(self, lr, valid_hw, core, hr=None):
        """Sum over `core` (B, 4) of the pre-pool features, per canvas image."""
        hr = self._check_hr(hr)
        self._find_pool_index(lr, hr)
        _, _, s = self._encode_jit(self.variables, jnp.asarray(lr), _rects(valid_hw),
                                   jnp.asarray(core, jnp.int32),
                                   None if hr is None else jnp.asarray(hr), mode="rescale")
        return s

    def encode_from_pool(self, pooled_mean):
        """(idr, fea) from a pooled (B, 4C) vector: runs the encoder head only."""
        b = pooled_mean.shape[0]
        small = jnp.zeros((b, MIN_CANVAS, MIN_CANVAS, 3), jnp.float32)
        valid = _rects([[MIN_CANVAS, MIN_CANVAS]] * b)
        idr, fea, _ = self._encode_jit(self.variables, small, valid, valid,
                                       replacement=jnp.asarray(pooled_mean, jnp.float32),
                                       mode="replace")
        return idr, fea

    def generate_canvas(self, lr, valid_hw, idr):
        return self._generate_jit(self.variables, jnp.asarray(lr), _rects(valid_hw),
                                  jnp.asarray(idr))

    def forward(self, images: Sequence[np.ndarray], hrs: Sequence[np.ndarray] | None = None,
                bucket: int = DEFAULT_BUCKET, batch_size: int = 1,
                progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
        """SR of each LR image (h, w, 3) float [0,1], images grouped into bucketed canvases
        (sides rounded up to `bucket`) and fixed-size batches (padded by repetition)."""
        if self.is_teacher and hrs is None:
            self._check_hr(None)
        s = self.scale
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            key = (round_up(im.shape[0], bucket), round_up(im.shape[1], bucket))
            groups.setdefault(key, []).append(i)
        out: list[np.ndarray | None] = [None] * len(images)
        for (ch, cw), idx in groups.items():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                chunk = chunk + [chunk[0]] * (batch_size - len(chunk))
                lr = np.zeros((batch_size, ch, cw, 3), np.float32)
                hr = np.zeros((batch_size, ch * s, cw * s, 3), np.float32) if (
                    self.is_teacher) else None
                valid = []
                for j, i in enumerate(chunk):
                    h, w = images[i].shape[:2]
                    lr[j, :h, :w] = images[i]
                    if hr is not None:
                        hr[j, :h * s, :w * s] = hrs[i][:h * s, :w * s]
                    valid.append((h, w))
                idr, _ = self.encode_canvas(lr, valid, hr)
                sr = np.asarray(self.generate_canvas(lr, valid, idr))
                for j, i in enumerate(chunk[:len(idx[start:start + batch_size])]):
                    h, w = valid[j]
                    out[i] = sr[j, :h * s, :w * s]
                    if progress is not None:
                        progress(1)
        return out

    # -- tiled --
    def encode_tiled(self, image: np.ndarray, tile: int, bucket: int = DEFAULT_BUCKET):
        """Exact whole-image (idr, fea) with memory bounded by `tile`."""
        h, w = image.shape[:2]
        pad = encoder_receptive_radius(self.spec)
        total = None
        for win, core in tile_windows(h, w, tile, pad, bucket):
            lr, valid = _window(image, win)
            s = np.asarray(self.encode_pool_sum(lr, [valid], core[None]), np.float64)
            total = s if total is None else total + s
        return self.encode_from_pool(total / float(h * w))

    def upscale(self, image: np.ndarray, tile: int | None = None, tile_pad: int = 16,
                bucket: int = DEFAULT_BUCKET, out: np.ndarray | None = None,
                quantize: Callable[[np.ndarray], np.ndarray] | None = None,
                progress: Callable[[int, int], None] | None = None):
        """SR of one LR image (h, w, 3) float32 [0,1]. `tile=None`/0: one canvas.
        Tiles are written into `out` (allocated if None) after `quantize` (e.g. to
        uint8), so no full-size float image is ever held. `progress(done, total)` is
        called after each generator tile (once, (1, 1), without tiling)."""
        s = self.scale
        h, w = image.shape[:2]
        q = quantize or (lambda a: a)
        if out is None:
            dtype = q(np.zeros((1, 1, 3), np.float32)).dtype
            out = np.empty((h * s, w * s, 3), dtype)
        if not tile or (h <= tile + 2 * tile_pad and w <= tile + 2 * tile_pad):
            ch, cw = round_up(h, bucket), round_up(w, bucket)
            lr = np.zeros((1, ch, cw, 3), np.float32)
            lr[0, :h, :w] = image
            idr, _ = self.encode_canvas(lr, [(h, w)])
            sr = np.asarray(self.generate_canvas(lr, [(h, w)], idr))
            out[...] = q(sr[0, :h * s, :w * s])
            if progress is not None:
                progress(1, 1)
            return out
        idr, _ = self.encode_tiled(image, tile, bucket)
        windows = list(tile_windows(h, w, tile, tile_pad, bucket))
        for done, (win, core) in enumerate(windows, 1):
            lr, valid = _window(image, win)
            sr = np.asarray(self.generate_canvas(lr, [valid], idr))[0]
            y0, y1, x0, x1 = (int(c) for c in core)        # core, window coordinates
            wy, wx = win[0], win[2]
            out[(wy + y0) * s:(wy + y1) * s, (wx + x0) * s:(wx + x1) * s] = q(
                sr[y0 * s:y1 * s, x0 * s:x1 * s])
            if progress is not None:
                progress(done, len(windows))
        return out


def _axis_windows(n: int, tile: int, pad: int, bucket: int):
    """[(win_start, win_size_canvas, core_start, core_end)] along one axis; all windows
    share one canvas size. Windows never leave the image (shifted inwards)."""
    span = tile + 2 * pad
    if n <= span:
        return [(0, round_up(n, bucket), 0, n)], n
    res = []
    for c0 in range(0, n, tile):
        c1 = min(c0 + tile, n)
        start = min(max(c0 - pad, 0), n - span)
        res.append((start, span, c0, c1))
    return res, span


def tile_windows(h: int, w: int, tile: int, pad: int, bucket: int = DEFAULT_BUCKET):
    """Yields (window (y0, y1, x0, x1) in image px, core (4,) int32 in window px)."""
    rows, _ = _axis_windows(h, tile, pad, bucket)
    cols, _ = _axis_windows(w, tile, pad, bucket)
    for ys, ycanvas, cy0, cy1 in rows:
        for xs, xcanvas, cx0, cx1 in cols:
            win = (ys, ys + ycanvas, xs, xs + xcanvas)
            core = np.array([cy0 - ys, cy1 - ys, cx0 - xs, cx1 - xs], np.int32)
            yield win, core


def _window(image: np.ndarray, win) -> tuple[np.ndarray, tuple[int, int]]:
    y0, y1, x0, x1 = win
    crop = image[y0:y1, x0:x1]
    canvas = np.zeros((1, y1 - y0, x1 - x0, 3), np.float32)
    canvas[0, :crop.shape[0], :crop.shape[1]] = crop
    return canvas, crop.shape[:2]


def available_memory_bytes() -> int:
    """Free accelerator memory (jax memory_stats) or, on CPU, MemAvailable."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    except Exception:  # noqa: BLE001 - backends without memory stats
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def auto_tile_size(spec, dtype=jnp.float32, memory_bytes: int | None = None) -> int:
    """Default LR tile side. Rule: the largest activations live at HR resolution with C
    channels (and 4C at 2x), i.e. about s^2 * C floats per LR pixel; allow
    TILE_LIVE_BUFFERS of them within TILE_MEMORY_FRACTION of the free memory:
    side = sqrt(fraction * free / (buffers * s^2 * C * bytes)), rounded down to a
    multiple of 32 and clamped to [64, 1024]."""
    free = available_memory_bytes() if memory_bytes is None else memory_bytes
    per_px = TILE_LIVE_BUFFERS * spec.scale ** 2 * spec.n_feats * jnp.dtype(dtype).itemsize
    side = int(math.sqrt(TILE_MEMORY_FRACTION * free / per_px))
    side = side // TILE_ALIGN * TILE_ALIGN
    return int(min(TILE_MAX, max(TILE_MIN, side)))
