"""The KDSR benchmark protocols (reference/EVALUATION.md §1.2-§1.5, §2.1-§2.3).

* `iso`    — "Gaussian8" (Table 1): every HR image x every sigma of `GAUSSIAN8_SIGMAS`,
             21x21 isotropic Gaussian, no noise; per-dataset mean over images x sigmas.
* `aniso`  — one anisotropic kernel (lambda1, lambda2, theta in degrees) + noise (Table 2).
* `paired` — LR and GT folders as given (KDSR-GAN, Table 3): files paired by sorted
             order (as the official Metric scripts do), GT cropped top-left to
             scale x LR size, BasicSR metrics (`psnr_y_basicsr`, `ssim_y_basicsr`).

HR images are cropped top-left to a multiple of the scale; the LR is synthesised from
the cropped HR with the classic pipeline (`kdsr_jax.degradation.classic`, deterministic
kernel mode) with a fixed noise key per image (`NOISE_SEED` folded with the image and
degradation indices, so results do not depend on batching). Classic metrics:
`psnr_y` / `ssim_y` (shave = scale). Every table has a Bicubic row: the LR upsampled
with the MATLAB-like bicubic of DEGRADATION.md §1.5 ("Upscaling path", edge-clamped
borders as the official resampler), i.e. `kdsr_jax.degradation.bicubic.upscale`.
SR runs through `tiling.Runner.forward` (bucketed masked canvases; no per-image compile).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdsr_jax.data import images as image_io
from kdsr_jax.degradation import bicubic, classic
from kdsr_jax.evaluate import metrics

# EVALUATION.md §1.3: Gaussian8 sigmas (x4: 1.8..3.2 step 0.2; x2: 0.9..1.6 step 0.1).
GAUSSIAN8_SIGMAS = {
    4: (1.8, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.2),
    2: (0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6),
}
# EVALUATION.md §1.1 / Table 1 column order (code names; "BSD100" = B100).
BENCHMARK_DATASETS = ("Set5", "Set14", "B100", "Urban100", "Manga109")
# EVALUATION.md §1.4: the shipped aniso test (Table 2 setting KDSR_S, Set14).
ANISO_DEFAULT = dict(lambda1=3.5, lambda2=1.5, theta=30.0, noise=10.0)
# Our fixed noise key (the official tester seeds torch once with 1, §1.2).
NOISE_SEED = 1
HR_SUBDIR = "HR"


class ProtocolError(ValueError):
    """Bad evaluation input (missing folders, no images, ...): one-line message."""


@dataclasses.dataclass(frozen=True)
class Degradation:
    """One deterministic classic degradation (DEGRADATION.md §1)."""

    blur_type: str = "iso_gaussian"    # 'iso_gaussian' | 'aniso_gaussian'
    sig: float = 2.6
    lambda1: float = 0.2
    lambda2: float = 4.0
    theta: float = 0.0                 # degrees
    noise: float = 0.0                 # 0-255 units

    @property
    def label(self) -> str:
        if self.blur_type == "iso_gaussian":
            s = f"iso sig={self.sig:g}"
        else:
            s = f"aniso l1={self.lambda1:g} l2={self.lambda2:g} theta={self.theta:g}"
        return s + (f" noise={self.noise:g}" if self.noise else "")


def iso_degradations(scale: int) -> list[Degradation]:
    if scale not in GAUSSIAN8_SIGMAS:
        raise ProtocolError(f"the Gaussian8 protocol has sigmas for x2 and x4 only, not x{scale}")
    return [Degradation("iso_gaussian", sig=s) for s in GAUSSIAN8_SIGMAS[scale]]


def aniso_degradation(lambda1, lambda2, theta, noise) -> Degradation:
    return Degradation("aniso_gaussian", lambda1=float(lambda1), lambda2=float(lambda2),
                       theta=float(theta), noise=float(noise))


# ----------------------------------------------------------------------- datasets --

def discover_datasets(root: str, names: Sequence[str] | None = None):
    """[(name, [hr paths])] for `<root>/<name>/HR/*` (sorted), in `names` order
    (default: the benchmark order for those present, then other subfolders)."""

    if not os.path.isdir(root):
        raise ProtocolError(f"data folder not found: {root}")
    present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, HR_SUBDIR)))
    if names:
        missing = [n for n in names if n not in present]
        if missing:
            raise ProtocolError(f"dataset(s) {', '.join(missing)} not found as {root}/<name>/"
                                f"{HR_SUBDIR}/ (found: {', '.join(present) or 'none'})")
        chosen = list(names)
    else:
        chosen = [n for n in BENCHMARK_DATASETS if n in present]
        chosen += [n for n in present if n not in chosen]
    if not chosen:
        raise ProtocolError(f"no dataset folders <name>/{HR_SUBDIR}/ under {root}")
    out = []
    for n in chosen:
        paths = image_io.list_images(os.path.join(root, n, HR_SUBDIR), recursive=False)
        if not paths:
            raise ProtocolError(f"{root}/{n}/{HR_SUBDIR}: no images")
        out.append((n, paths))
    return out


def crop_to_scale(img: np.ndarray, scale: int) -> np.ndarray:
    """HR[0 : floor(H/s) s, 0 : floor(W/s) s] (EVALUATION.md §1.2)."""
    h, w = img.shape[:2]
    return img[:h - h % scale, :w - w % scale]


# ----------------------------------------------------------------- LR synthesis --

def _classic_config(deg: Degradation, scale: int):
    """Deterministic (`random=False`) classic config with the official parameter names."""

    return classic.test_config(scale=scale, blur_type=deg.blur_type, sig=deg.sig,
                               lambda_1=deg.lambda1, lambda_2=deg.lambda2, theta=deg.theta,
                               noise=deg.noise)


def noise_key(dataset_index: int, image_index: int, degradation_index: int) -> jax.Array:
    key = jax.random.key(NOISE_SEED)
    for i in (dataset_index, image_index, degradation_index):
        key = jax.random.fold_in(key, i)
    return key


def synthesize_lr(hr_u8: np.ndarray, deg: Degradation, scale: int, key) -> np.ndarray:
    """Deterministic classic LR (h, w, 3) float32 (exact 8-bit levels) of a cropped HR."""

    hr = jnp.asarray(hr_u8, jnp.float32)[None] / 255.0
    lr = classic.degrade(key, hr, _classic_config(deg, scale))
    return np.asarray(lr[0], np.float32)


# ------------------------------------------------------------------ bicubic row --

def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-like bicubic x`scale` upsampling of one (h, w, C) image: the official
    resampler's upscaling path (DEGRADATION.md §1.5), from
    `kdsr_jax.degradation.bicubic.upscale`. float32 (h*s, w*s, C), not clamped."""

    x = jnp.asarray(np.asarray(lr, np.float32))[None]
    return np.asarray(bicubic.upscale(x, int(scale))[0], np.float32)


# ------------------------------------------- pieces shared with training validation --

def to_uint8(x) -> np.ndarray:
    """round(clip(x, 0, 1) · 255) as uint8: the 8-bit SR the metrics and PNGs see."""
    return np.round(np.clip(np.asarray(x, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def score_synthetic(sr, hr_u8: np.ndarray, scale: int) -> tuple[float, float]:
    """(PSNR, SSIM) on Y of the iso / aniso protocols (KDSR-classic, shave = scale)."""
    return metrics.psnr_y(sr, hr_u8, scale), metrics.ssim_y(sr, hr_u8, scale)


def score_paired(sr, gt_u8: np.ndarray) -> tuple[float, float]:
    """(PSNR, SSIM) on Y of the paired protocol (BasicSR, crop 4) of the 8-bit SR."""
    sr8 = to_uint8(sr)
    return metrics.psnr_y_basicsr(sr8, gt_u8), metrics.ssim_y_basicsr(sr8, gt_u8)


def paired_files(lr_dir: str, gt_dir: str) -> tuple[list[str], list[str]]:
    """(LR paths, GT paths) of the paired protocol, paired by sorted order (non-recursive).
    ProtocolError for a missing folder, no images or a count mismatch."""
    for d in (lr_dir, gt_dir):
        if not os.path.isdir(d):
            raise ProtocolError(f"folder not found: {d}")
    lrp = image_io.list_images(lr_dir, recursive=False)
    gtp = image_io.list_images(gt_dir, recursive=False)
    if not lrp:
        raise ProtocolError(f"{lr_dir}: no images")
    if len(lrp) != len(gtp):
        raise ProtocolError(f"{len(lrp)} LR images but {len(gtp)} GT images")
    return lrp, gtp


def load_paired(lr_dir: str, gt_dir: str, scale: int):
    """[(name, lr float32 (h, w, 3) in [0,1], gt uint8 (s·h, s·w, 3))] of the paired
    protocol: files paired by sorted order, GT cropped top-left to s x the LR size.
    ProtocolError for missing folders, no images, a count mismatch or a small GT."""
    lrp, gtp = paired_files(lr_dir, gt_dir)
    out = []
    for lp, gp in zip(lrp, gtp):
        lr = image_io.load_image(lp).astype(np.float32) / 255.0
        gt = image_io.load_image(gp)
        h, w = lr.shape[0] * scale, lr.shape[1] * scale
        if gt.shape[0] < h or gt.shape[1] < w:
            raise ProtocolError(f"{gp}: GT {gt.shape[:2]} smaller than {scale} x LR ({h}, {w})")
        out.append((os.path.basename(lp), lr, gt[:h, :w]))
    return out


# --------------------------------------------------------------------- evaluation --

@dataclasses.dataclass
class Scores:
    psnr: list = dataclasses.field(default_factory=list)
    ssim: list = dataclasses.field(default_factory=list)

    def add(self, p, s):
        self.psnr.append(float(p))
        self.ssim.append(float(s))

    def mean(self):
        return (float(np.mean(self.psnr)) if self.psnr else math.nan,
                float(np.mean(self.ssim)) if self.ssim else math.nan)


def _skip(skipped: list, dataset: str, path: str, exc: BaseException) -> None:
    """Records one unusable image with its one-line reason (once per image)."""
    name = os.path.basename(path)
    if any(r["dataset"] == dataset and r["image"] == name for r in skipped):
        return
    reason = " ".join(str(exc).split()) or type(exc).__name__
    reason = reason.replace(f"{path}: ", "")
    skipped.append(dict(dataset=dataset, image=name, path=path, reason=reason))


def _scored(skipped: list, per_image: list) -> None:
    if not per_image:
        first = skipped[0] if skipped else None
        raise ProtocolError("no image could be scored" + (
            f" ({len(skipped)} skipped; first: {first['path']}: {first['reason']})"
            if first else ""))


def evaluate_synthetic(runner, datasets, degradations: Sequence[Degradation], *,
                       bucket: int = 32, batch_size: int = 1, max_images: int = 0,
                       progress: Callable[[int], None] | None = None,
                       with_bicubic: bool = True, per_image: bool = True,
                       on_sr: Callable[[str, str, Degradation, np.ndarray], None] | None = None
                       ) -> dict:
    """Runs the iso/aniso protocol. `datasets` = [(name, [hr paths])]. Returns
    {'rows': {method: {dataset: (psnr, ssim)}}, 'per_image': [...], 'skipped': [...]}.

    An image that cannot be scored (unreadable, or too small for the scale / the SSIM
    window after cropping) is skipped: recorded in 'skipped' with its reason, the means
    cover the rest (NaN for a dataset with none left). ProtocolError if no image at all
    could be scored. Noise keys keep each image's index, so skipping one image never
    changes another's score.
    `on_sr(dataset, hr_path, degradation, sr)` receives each SR image (h, w, 3) float
    in [0, 1] (e.g. to save it: scripts/evaluate.py --save-images)."""
    s = runner.scale
    method = "KDSR"
    rows = {method: {}}
    if with_bicubic:
        rows["Bicubic"] = {}
    per_image_rows, skipped, scored = [], [], 0
    for di, (name, paths) in enumerate(datasets):
        if max_images:
            paths = paths[:max_images]
        hrs = {}
        for ii, p in enumerate(paths):
            try:
                hr = crop_to_scale(image_io.load_image(p), s)
                if min(hr.shape[:2]) < s:
                    raise ProtocolError(f"image {hr.shape[:2]} is smaller than the scale x{s}")
                hrs[ii] = hr
            except ValueError as exc:
                _skip(skipped, name, p, exc)
        if progress and len(hrs) < len(paths):
            progress((len(paths) - len(hrs)) * len(degradations))
        sc, bc = Scores(), Scores()
        for gi, deg in enumerate(degradations):
            idx = [ii for ii in sorted(hrs) if not any(
                r["dataset"] == name and r["path"] == paths[ii] for r in skipped)]
            lrs = [synthesize_lr(hrs[ii], deg, s, noise_key(di, ii, gi)) for ii in idx]
            hr_f = ([hrs[ii].astype(np.float32) / 255.0 for ii in idx]
                    if runner.is_teacher else None)
            srs = runner.forward(lrs, hr_f, bucket=bucket, batch_size=batch_size,
                                 progress=progress) if idx else []
            for ii, lr, sr in zip(idx, lrs, srs):
                hr = hrs[ii]
                if on_sr is not None:
                    on_sr(name, paths[ii], deg, sr)
                try:
                    p, q = metrics.psnr_y(sr, hr, s), metrics.ssim_y(sr, hr, s)
                    if with_bicubic:
                        bp = bicubic_upscale(lr, s)
                        b = (metrics.psnr_y(bp, hr, s), metrics.ssim_y(bp, hr, s))
                except ValueError as exc:   # e.g. smaller than the SSIM window
                    _skip(skipped, name, paths[ii], exc)
                    continue
                sc.add(p, q)
                scored += 1
                row = dict(dataset=name, image=os.path.basename(paths[ii]),
                           degradation=deg.label, psnr=p, ssim=q)
                if with_bicubic:
                    bc.add(*b)
                    row.update(bicubic_psnr=b[0], bicubic_ssim=b[1])
                if per_image:
                    per_image_rows.append(row)
        rows[method][name] = sc.mean()
        if with_bicubic:
            rows["Bicubic"][name] = bc.mean()
    _scored(skipped, [1] * scored)
    return dict(rows=rows, per_image=per_image_rows, skipped=skipped,
                degradations=[d.label for d in degradations],
                datasets=[n for n, _ in datasets], metrics="psnr_y/ssim_y (KDSR-classic, "
                "shave=scale)")


def evaluate_paired(runner, lr_dir: str, gt_dir: str, *, name: str = "paired",
                    bucket: int = 32, batch_size: int = 1,
                    progress: Callable[[int], None] | None = None,
                    with_bicubic: bool = True,
                    on_sr: Callable[[str, str, None, np.ndarray], None] | None = None) -> dict:
    """KDSR-GAN protocol: LR files as given, GT paired by sorted order, GT cropped to
    (s h_lr, s w_lr) top-left, BasicSR PSNR/SSIM-Y (crop 4). A pair that cannot be
    scored (unreadable file, GT smaller than s x LR, too small for SSIM) is skipped and
    recorded in 'skipped' with its reason; ProtocolError if none could be scored.
    `on_sr(name, lr_path, None, sr)` receives each SR image as in `evaluate_synthetic`."""
    lrp, gtp = paired_files(lr_dir, gt_dir)
    s = runner.scale
    pairs, skipped = [], []
    for lp, gp in zip(lrp, gtp):
        try:
            lr = image_io.load_image(lp).astype(np.float32) / 255.0
            gt = image_io.load_image(gp)
            h, w = lr.shape[0] * s, lr.shape[1] * s
            if gt.shape[0] < h or gt.shape[1] < w:
                raise ProtocolError(f"GT {gp} {gt.shape[:2]} smaller than {s} x LR ({h}, {w})")
            pairs.append((lp, lr, gt[:h, :w]))
        except ValueError as exc:
            _skip(skipped, name, lp, exc)
    if progress and skipped:
        progress(len(skipped))
    lrs = [lr for _, lr, _ in pairs]
    hr_f = [g.astype(np.float32) / 255.0 for _, _, g in pairs] if runner.is_teacher else None
    srs = runner.forward(lrs, hr_f, bucket=bucket, batch_size=batch_size,
                         progress=progress) if pairs else []
    sc, bc, per = Scores(), Scores(), []
    for (p, lr, gt), sr in zip(pairs, srs):
        if on_sr is not None:
            on_sr(name, p, None, sr)
        sr8 = np.round(np.clip(sr, 0, 1) * 255).astype(np.uint8)
        try:
            a = (metrics.psnr_y_basicsr(sr8, gt), metrics.ssim_y_basicsr(sr8, gt))
            if with_bicubic:
                b8 = np.round(np.clip(bicubic_upscale(lr, s), 0, 1) * 255).astype(np.uint8)
                b = (metrics.psnr_y_basicsr(b8, gt), metrics.ssim_y_basicsr(b8, gt))
        except ValueError as exc:
            _skip(skipped, name, p, exc)
            continue
        sc.add(*a)
        row = dict(dataset=name, image=os.path.basename(p), degradation="as given",
                   psnr=a[0], ssim=a[1])
        if with_bicubic:
            bc.add(*b)
            row.update(bicubic_psnr=b[0], bicubic_ssim=b[1])
        per.append(row)
    _scored(skipped, per)
    rows = {"KDSR": {name: sc.mean()}}
    if with_bicubic:
        rows["Bicubic"] = {name: bc.mean()}
    return dict(rows=rows, per_image=per, skipped=skipped, degradations=["as given"],
                datasets=[name], metrics="psnr_y_basicsr/ssim_y_basicsr (BasicSR, crop 4)")


# ------------------------------------------------------------------------ reports --

def format_table(result: dict) -> str:
    """The paper's layout: one row per method, 'PSNR / SSIM' per dataset."""
    names = result["datasets"]
    header = ["Method"] + names
    lines = []
    for method in ["Bicubic", "KDSR"]:
        if method not in result["rows"]:
            continue
        cells = [method]
        for n in names:
            p, q = result["rows"][method][n]
            cells.append(f"{p:.2f} / {q:.4f}")
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
    fmt = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    sep = "-+-".join("-" * w for w in widths)
    skipped = result.get("skipped") or []
    notes = [f"{len(skipped)} image(s) skipped (not in the means):"] if skipped else []
    notes += [f"  {r['dataset']}/{r['image']}: {r['reason']}" for r in skipped]
    return "\n".join([fmt(header), sep] + [fmt(r) for r in lines] + notes)


def output_paths(output: str) -> tuple[str, str]:
    """(`<stem>.json`, `<stem>.csv`) for `output` (a stem, or ending in .json/.csv)."""
    stem = output[:-5] if output.endswith(".json") else output[:-4] if output.endswith(
        ".csv") else output
    return stem + ".json", stem + ".csv"


def write_outputs(result: dict, output: str) -> tuple[str, str]:
    """Writes `<output>.json` (everything) and `<output>.csv` (per-dataset means)
    atomically; `output` may end in .json/.csv or be a stem. Returns the two paths."""
    jpath, cpath = output_paths(output)
    os.makedirs(os.path.dirname(os.path.abspath(jpath)), exist_ok=True)
    serial = dict(result)
    serial["rows"] = {m: {d: {"psnr": v[0], "ssim": v[1]} for d, v in r.items()}
                      for m, r in result["rows"].items()}
    _atomic_text(jpath, json.dumps(serial, indent=2, allow_nan=True))
    import io

    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(["method", "dataset", "psnr", "ssim"])
    for m, r in result["rows"].items():
        for d, (p, q) in r.items():
            wr.writerow([m, d, f"{p:.4f}", f"{q:.6f}"])
    _atomic_text(cpath, buf.getvalue())
    return jpath, cpath


def _atomic_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
