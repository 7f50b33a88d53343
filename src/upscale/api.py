"""Public API: the one code path that single-image and batch runs share.

    model = load_model("esrgan")                  # registry name, or a weights file
    out = upscale_image(read_image("a.png"), model, outscale=3)
    up = Upscaler(model, EngineOptions(tile_px=128))  # prepares the network once, for many images
    up.upscale_file("a.png", "a_x4.png")

Nothing here keeps state between calls except the prepared engine inside an ``Upscaler``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import errors
from .engine import Engine, EngineOptions, Workload
from .io import Image, read_image, write_image
from .model import Model
from .resample import resize_array

log = logging.getLogger("upscale")

ALPHA_MODES = ("model", "bicubic")
Progress = Callable[[int, int], None]


def load_model(path_or_name: str | Path, *, alpha: float | None = None) -> Model:
    """A registry name or a weights file (.safetensors, .pth/.pt, ncnn .param) -> a ready ``Model``.

    ``alpha`` interpolates a registry model with its registered PSNR/GAN twin (ESRGAN's network
    interpolation): 0 is the PSNR model, 1 the GAN model.
    """
    from . import hub, interp, loading, registry  # registry/hub only when a model is asked for

    path = Path(path_or_name)
    if path.is_file():
        if alpha is not None:
            raise errors.UsageError("--alpha needs a registry model with a twin, not a file; "
                                    "use `upscale interp --psnr A --gan B` for two files")
        if path.suffix.lower() == ".param":
            from .ncnn import read_ncnn
            arch, hparams, state_dict = read_ncnn(path)
            return loading.model_from_state_dict(state_dict, arch, hparams, source=str(path))
        return loading.load_model(path)
    if path.exists():
        raise errors.ModelNotFoundError(f"{path} is not a weights file")
    spec = registry.get_model(str(path_or_name))
    if alpha is not None:
        return interp.interpolated_model(spec, alpha)
    model = loading.load_model(hub.weights_path(spec), name=spec.name)
    return replace(model, name=spec.name, source=spec.name, bf16_safe=spec.bf16_safe)


def default_model_name(scale: float) -> str:
    """The registry's default model for the native scale nearest to ``scale`` (ties go up)."""
    from . import registry

    spec = registry.default_model_for_scale(scale)
    if spec is None:
        raise errors.ModelNotFoundError(
            "no default model is installed for this scale; pass -m NAME or -m path/to/weights")
    return spec.name


def output_size(height: int, width: int, outscale: float) -> tuple[int, int]:
    """(height, width) of the output for a requested scale: rounded, at least 1 pixel."""
    return max(1, int(round(height * outscale))), max(1, int(round(width * outscale)))


def bleed_colour(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Fill the colour of fully transparent pixels from their nearest visible neighbours.

    Transparent pixels often store black (or garbage); a network would smear that into the visible
    edge and leave a dark fringe once alpha is applied. Visible pixels are returned unchanged.
    """
    hidden = alpha == 0
    if not hidden.any() or hidden.all():
        return rgb
    out = rgb.astype(np.float32)
    known = (~hidden).astype(np.float32)
    values = out * known[..., None]
    radius = 1
    filled = known > 0
    while not filled.all():
        k = 2 * radius + 1
        num = _box_sum(values, k)
        den = _box_sum(known[..., None], k)[..., 0]
        new = (~filled) & (den > 0)
        out[new] = num[new] / den[new][:, None]
        filled |= new
        radius *= 2
    return np.clip(np.rint(out), 0, np.iinfo(rgb.dtype).max).astype(rgb.dtype) if rgb.dtype != np.float32 else out


def _box_sum(a: np.ndarray, k: int) -> np.ndarray:
    """Sum over a k x k window (zero outside), via cumulative sums; a is (H, W, C) float32."""
    r = k // 2
    p = np.pad(a, ((r + 1, r), (r + 1, r), (0, 0)))
    c = p.cumsum(0).cumsum(1)
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]


class Upscaler:
    """A model prepared once on its device (cast, channels_last, compiled) for any number of images."""

    def __init__(self, model: Model, options: EngineOptions | None = None, *,
                 work: Workload | None = None) -> None:
        """``work``: what the caller plans to run (lets ``compile="auto"`` decide and a compiled engine
        fit its tile shape; see ``engine.Workload``)."""
        self.model = model
        self.options = options or EngineOptions()
        self.engine = Engine(model, self.options, work=work)

    def upscale(self, image: Image, *, outscale: float | None = None, alpha_mode: str = "model",
                progress: Progress | None = None, stats: dict | None = None) -> Image:
        """Upscale an ``Image`` to ``outscale`` (default: the model's native scale)."""
        if alpha_mode not in ALPHA_MODES:
            raise errors.UsageError(f"--alpha-mode must be one of {', '.join(ALPHA_MODES)}, not {alpha_mode!r}")
        scale = self.model.scale
        if outscale is None:
            outscale = float(scale)
        if not (outscale > 0 and math.isfinite(outscale)):
            raise errors.UsageError(f"--scale must be a number > 0, not {outscale}")
        h, w = image.pixels.shape[:2]
        target_hw = output_size(h, w, outscale)
        native_hw = (h * scale, w * scale)

        pixels = image.pixels
        if image.alpha is not None:
            pixels = bleed_colour(pixels, image.alpha)
        rgb = self._run(pixels, progress, stats)
        alpha = None
        if image.alpha is not None:
            if alpha_mode == "model":
                alpha = self._run(image.alpha[..., None], None, stats)[..., 0]
            else:
                alpha = resize_array(image.alpha, (native_hw[1], native_hw[0]), "bicubic")
        if target_hw != native_hw:
            rgb = resize_array(rgb, (target_hw[1], target_hw[0]), "lanczos")
            if alpha is not None:
                alpha = resize_array(alpha, (target_hw[1], target_hw[0]), "lanczos")
        return replace(image, pixels=rgb, alpha=alpha)

    def _run(self, pixels: np.ndarray, progress: Progress | None, stats: dict | None) -> np.ndarray:
        """Run (H, W, C) through the engine, matching the model's channel count (gray <-> RGB)."""
        channels = pixels.shape[2]
        want = self.model.in_channels
        if channels == want:
            return self.engine.upscale(pixels, progress=progress, stats=stats)
        if channels == 1 and want == 3:
            out = self.engine.upscale(np.repeat(pixels, 3, axis=2), progress=progress, stats=stats)
            mean = out.astype(np.float32).mean(axis=2, keepdims=True)
            return np.rint(mean).astype(pixels.dtype) if pixels.dtype != np.float32 else mean
        if channels == 3 and want == 1:
            raise errors.UsageError(f"{self.model.source or 'the model'} takes 1-channel (grayscale) input; "
                                    "the image is RGB")
        raise errors.UsageError(f"cannot feed a {channels}-channel image to a {want}-channel model")

    def upscale_file(self, src: str | Path, dst: str | Path, *, outscale: float | None = None,
                     alpha_mode: str = "model", output_format: str | None = None, quality: int | None = None,
                     max_pixels: int | None = None, progress: Progress | None = None,
                     stats: dict | None = None) -> Image:
        """Read ``src``, upscale, write ``dst`` atomically; returns the written image."""
        image = read_image(src, max_pixels=max_pixels)
        result = self.upscale(image, outscale=outscale, alpha_mode=alpha_mode, progress=progress, stats=stats)
        write_image(result, dst, format=output_format, quality=quality)
        return result


def workload_for(image: Image, alpha_mode: str = "model") -> Workload:
    """What upscaling this one image runs through the model: its pixels (twice when the alpha channel
    goes through the model too) and its size."""
    h, w = image.pixels.shape[:2]
    passes = 2 if image.alpha is not None and alpha_mode == "model" else 1
    return Workload(h * w * passes, (h, w))


def upscale_image(image: Image, model: Model, *, outscale: float | None = None, alpha_mode: str = "model",
                  options: EngineOptions | None = None) -> Image:
    """One-shot convenience: prepare ``model`` and upscale one ``Image``."""
    work = workload_for(image, alpha_mode)
    return Upscaler(model, options, work=work).upscale(image, outscale=outscale, alpha_mode=alpha_mode)


def default_output_path(src: str | Path, outscale: float, output_format: str | None = None) -> Path:
    """``{stem}_x{scale}.{ext}`` beside the input (scale printed without a trailing .0)."""
    src = Path(src)
    scale_txt = f"{outscale:g}"
    ext = f".{output_format.lower()}" if output_format else src.suffix
    if ext.lower() == ".jpeg":
        ext = ".jpg"
    return src.with_name(f"{src.stem}_x{scale_txt}{ext}")
