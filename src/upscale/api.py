"""Public API: the one code path that single-image and batch runs share.

    model = load_model("esrgan")                  # registry name, or a weights file
    out = upscale_image(read_image("a.png"), model, outscale=3)
    up = Upscaler(model, EngineOptions(tile_px=128))  # prepares the network once, for many images
    up.upscale_file("a.png", "a_x4.png")

The rules the command line shares with library callers live here once: the default scale (the
model's native one; x4 picks the default model when no model is named), the checks of an output
path and of the output's size that can be made before a model is loaded, and where a result is put.
Errors name this module's parameters (``outscale``, ``alpha_mode``, ``force``), never flags.
Nothing here keeps state between calls except the prepared engine inside an ``Upscaler``.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import atomic, errors
from .engine import EngineOptions, Workload, check_output_fits
from .io import ENCODER_MEMORY, Animation, Image, output_extension, output_format_for, read_image, write_image
from .io import as_planes
from .pillow_resize import resize_array

if TYPE_CHECKING:       # the engine and the model (torch) load when a model is loaded or run
    from .engine import RunStats
    from .model import Model

log = logging.getLogger("upscale")

ALPHA_MODES = ("model", "bicubic")
DEFAULT_OUTSCALE = 4.0   # picks the default model when neither a model nor a scale is given
Progress = Callable[[int, int], None]


def load_model(path_or_name: str | Path, *, alpha: float | None = None,
               weights_found: Callable[[str | None], None] | None = None) -> Model:
    """A registry name or a weights file (.safetensors, .pth/.pt, ncnn .param) -> a ready ``Model``.

    ``alpha`` interpolates a registry model with its registered PSNR/GAN twin (ESRGAN's network
    interpolation): 0 is the PSNR model, 1 the GAN model. ``weights_found``: see
    ``resolve.resolve_model``.
    """
    from .resolve import resolve_model  # registry/hub only when a model is asked for

    if not isinstance(path_or_name, (str, os.PathLike)) or not str(path_or_name).strip():
        raise errors.UsageError(f"model must be a registry name or a weights file, not {path_or_name!r}",
                                params=("model",))
    return resolve_model(path_or_name, alpha=alpha, weights_found=weights_found)


def default_model_name(outscale: float | None = None) -> str:
    """The registry's default model for the native scale nearest to ``outscale`` (ties go up; None:
    ``DEFAULT_OUTSCALE``)."""
    from . import registry

    spec = registry.default_model_for_scale(DEFAULT_OUTSCALE if outscale is None else outscale)
    if spec is None:
        raise errors.ModelNotFoundError(
            "no default model is installed for this scale; name a model (a registry name or a weights file)")
    return spec.name


def check_outscale(outscale: float | None) -> None:
    """``UsageError`` unless ``outscale`` is None (the model's native scale) or a finite number > 0."""
    if outscale is not None and not (isinstance(outscale, numbers.Real) and not isinstance(outscale, bool)
                                     and outscale > 0 and math.isfinite(outscale)):
        raise errors.UsageError(f"outscale must be a number > 0, not {outscale!r}", params=("outscale",))


def outscale_for(model: Model, outscale: float | None) -> float:
    """The scale a run produces: ``outscale``, or the model's native scale when it is None."""
    check_outscale(outscale)
    return float(model.scale) if outscale is None else float(outscale)


def check_output_memory(image: Image, outscale: float, *, native_scale: int | None = None,
                        path: str | Path | None = None, frames: int = 1, encoder: str | None = None) -> None:
    """``ResourceError`` (naming ``path``) when the output of ``image`` at ``outscale`` cannot fit in
    memory (``frames`` of them: an animation's outputs are all held until it is written). Without
    ``native_scale`` (no model loaded yet) the output's own size is checked; with it, also the float32
    image a resize from the native scale builds. ``encoder`` (a Pillow format name: the output's)
    adds what that encoder holds beside the output while it writes it (``io.ENCODER_MEMORY``: AVIF's
    is about twelve times the output)."""
    h, w, c = image.pixels.shape
    check_memory(h, w, c + (image.alpha is not None), image.pixels.dtype, outscale, native_scale=native_scale,
                 path=path, frames=frames, encoder=encoder)


def check_memory(h: int, w: int, channels: int, dtype: np.dtype, outscale: float, *, native_scale: int | None = None,
                 path: str | Path | None = None, frames: int = 1, encoder: str | None = None) -> None:
    """``check_output_memory`` for planes of this size, ``channels`` (alpha included) and ``dtype``."""
    held = (outscale, dtype, frames, "output", 1.0)      # the outputs kept until written
    checks = [held]
    if native_scale is not None and native_scale != outscale:   # one frame's resize at a time
        checks = [(native_scale, dtype, 1, "the model's output", 1.0),
                  (outscale, np.float32, 1, "resizing to", 1.0)] + ([held] if frames > 1 else [])
    extra = ENCODER_MEMORY.get(encoder or "", 0.0)
    if extra:   # the outputs held while the encoder works on one of them
        checks.append((outscale, dtype, 1, f"output, with the {encoder} encoder's working memory,",
                       frames + extra))
    try:
        for scale, held_dtype, count, what, factor in checks:
            check_output_fits(h, w, channels, scale, held_dtype, what, count, factor)
    except errors.ResourceError as err:
        raise errors.ResourceError(err.message, path=path) from None


def check_target(src: str | Path, target: str | Path, *, force: bool = False,
                 output_format: str | None = None) -> None:
    """Refuse, before any work: writing over the input, a folder, an existing file without ``force``,
    a target whose folder is missing or is a file, and an output format io cannot write."""
    problem = atomic.target_problem(target, (src,), force=force)
    if problem is not None:
        kind, message = problem
        if kind == "input":
            message = "refusing to overwrite the input image; choose another output"
        raise errors.ImageWriteError(message, path=target, params=("force",) if kind == "exists" else ())
    output_format_for(target, output_format)


def write_result(image: Image, target: str | Path, *, output_format: str | None = None,
                 quality: int | None = None, threads: int | None = None) -> None:
    """Write ``image`` to ``target`` atomically, after removing temp files that killed runs (dead
    processes of this host) left for that same target."""
    target = Path(target)
    atomic.sweep_temps_for(target)
    write_image(image, target, format=output_format, quality=quality, threads=threads)


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
    """A model prepared once on its device (cast, channels_last, compiled) for any number of images.
    One instance may serve several threads: their images go through the network one at a time."""

    def __init__(self, model: Model, options: EngineOptions | None = None, *,
                 work: Workload | None = None) -> None:
        """``work``: what the caller plans to run (lets ``compile="auto"`` decide and a compiled engine
        fit its tile shape; see ``engine.Workload``)."""
        from .engine import Engine
        from .model import Model

        if not isinstance(model, Model):
            raise errors.UsageError(f"model must be a Model from load_model(name or weights file), not "
                                    f"{type(model).__name__}", params=("model",))
        self.model = model
        self.options = options or EngineOptions()
        self.engine = Engine(model, self.options, work=work)
        self._lock = threading.Lock()    # one image at a time through the engine (OpenVINO's one request,
        #                                  the winograd backend's buffers: neither is reentrant)

    def upscale(self, image: Any, *, outscale: float | None = None, alpha_mode: str = "model",
                progress: Progress | None = None, stats: RunStats | None = None) -> Any:
        """Upscale ``image`` to ``outscale`` (default: the model's native scale) and return the same kind:

        - an ``Image`` (metadata kept);
        - a numpy array, RGB order, (H, W) or (H, W, C) with C 1 (gray), 2 (gray + alpha), 3 (RGB) or 4
          (RGBA), uint8, uint16 or float32 in [0, 1]: an array of the same layout and dtype (any strides);
        - a Pillow image, decoded by its mode as ``read_image`` decodes files: ``L``, ``LA``, ``RGB``,
          ``RGBA`` or ``I;16`` back (``io.to_pillow``).

        ``stats``, when given, adds up the engine's figures of every pass (the image, and its alpha)."""
        pixels, alpha, back = as_planes(image)
        return back(*self._upscale_planes(pixels, alpha, outscale, alpha_mode, progress, stats))

    def _upscale_planes(self, pixels: np.ndarray, alpha: np.ndarray | None, outscale: float | None,
                        alpha_mode: str, progress: Progress | None,
                        stats: RunStats | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(H, W, C) pixels and their (H, W) alpha or None -> the same, upscaled."""
        if alpha_mode not in ALPHA_MODES:
            raise errors.UsageError(f"alpha_mode must be one of {', '.join(ALPHA_MODES)}, not {alpha_mode!r}",
                                    params=("alpha_mode",))
        scale = self.model.scale
        outscale = outscale_for(self.model, outscale)
        h, w, c = pixels.shape
        check_memory(h, w, c + (alpha is not None), pixels.dtype, outscale, native_scale=scale)
        target_hw = output_size(h, w, outscale)
        native_hw = (h * scale, w * scale)

        rgb = self._run(pixels if alpha is None else bleed_colour(pixels, alpha), progress, stats)
        if alpha is not None and not alpha_varies(alpha):   # all opaque (or one level): kept exactly,
            alpha = np.full(target_hw, alpha.flat[0], dtype=alpha.dtype)       # no pass and no resize
        elif alpha is not None:
            alpha = (self._run(alpha[..., None], None, stats)[..., 0] if alpha_mode == "model"
                     else resize_array(alpha, (native_hw[1], native_hw[0]), "bicubic"))
            if target_hw != native_hw:
                alpha = resize_array(alpha, (target_hw[1], target_hw[0]), "lanczos")
        if target_hw != native_hw:
            rgb = resize_array(rgb, (target_hw[1], target_hw[0]), "lanczos")
        return rgb, alpha

    def upscale_animation(self, animation: Animation, *, outscale: float | None = None, alpha_mode: str = "model",
                          on_frame: Progress | None = None, stats: RunStats | None = None) -> Animation:
        """Every frame of ``animation`` through ``upscale``, one after another (``on_frame(done, total)``
        after each); durations and loop are kept. ``ResourceError`` first when all the frames' outputs,
        held until written, cannot fit in memory together."""
        first = animation.frames[0]
        check_output_memory(first, outscale_for(self.model, outscale), native_scale=self.model.scale,
                            frames=len(animation.frames))
        frames = []
        for frame in animation.frames:
            frames.append(self.upscale(frame, outscale=outscale, alpha_mode=alpha_mode, stats=stats))
            if on_frame is not None:
                on_frame(len(frames), len(animation.frames))
        return replace(animation, frames=frames)

    def _run(self, pixels: np.ndarray, progress: Progress | None, stats: RunStats | None) -> np.ndarray:
        """Run (H, W, C) through the engine, matching the model's channel count (gray <-> RGB)."""
        channels = pixels.shape[2]
        want = self.model.in_channels
        if channels == want:
            with self._lock:
                return self.engine.upscale(pixels, progress=progress, stats=stats)
        if channels == 1 and want == 3:
            with self._lock:
                out = self.engine.upscale(np.repeat(pixels, 3, axis=2), progress=progress, stats=stats)
            if pixels.dtype == np.float32:
                return out.mean(axis=2, keepdims=True)
            # the rounded mean of the three channels, in integers: a sum of three has no halves, so
            # (sum + 1) // 3 is the nearest; 2-4 bytes a pixel where a float mean took 16
            total = out.sum(axis=2, keepdims=True, dtype=np.uint16 if pixels.dtype == np.uint8 else np.uint32)
            total += 1
            total //= 3
            return total.astype(pixels.dtype)
        if channels == 3 and want == 1:
            raise errors.UsageError(f"{self.model.source or 'the model'} takes 1-channel (grayscale) input; "
                                    "the image is RGB")
        raise errors.UsageError(f"cannot feed a {channels}-channel image to a {want}-channel model")

    def upscale_file(self, src: str | Path, dst: str | Path, *, outscale: float | None = None,
                     alpha_mode: str = "model", output_format: str | None = None, quality: int | None = None,
                     max_pixels: int | None = None, progress: Progress | None = None,
                     stats: RunStats | None = None) -> Image:
        """Read ``src``, upscale, write ``dst`` atomically (over an existing file); returns the written
        image. ``ImageWriteError`` before any work for a ``dst`` that is ``src`` or cannot be written."""
        check_target(src, dst, force=True, output_format=output_format)
        image = read_image(src, max_pixels=max_pixels)
        result = self.upscale(image, outscale=outscale, alpha_mode=alpha_mode, progress=progress, stats=stats)
        write_result(result, dst, output_format=output_format, quality=quality)
        return result


def alpha_varies(alpha: np.ndarray) -> bool:
    """Whether an alpha channel holds more than one level: one that does not (a fully opaque RGBA
    image, as screenshots often are) is carried over as it is, without its pass through the model."""
    return bool(alpha.size) and alpha.min() != alpha.max()


def model_passes(image: Image, alpha_mode: str = "model") -> int:
    """How many passes through the model upscaling ``image`` takes: two when its alpha channel goes
    through the model too."""
    return _passes(image.alpha, alpha_mode)


def _passes(alpha: np.ndarray | None, alpha_mode: str) -> int:
    return 2 if alpha is not None and alpha_mode == "model" and alpha_varies(alpha) else 1


def workload_for(image: Image, alpha_mode: str = "model") -> Workload:
    """What upscaling this one image runs through the model: its pixels, once per pass, and its size."""
    return _workload(image.pixels, image.alpha, alpha_mode)


def _workload(pixels: np.ndarray, alpha: np.ndarray | None, alpha_mode: str) -> Workload:
    h, w = pixels.shape[:2]
    return Workload(h * w * _passes(alpha, alpha_mode), (h, w))


def upscale_image(image: Any, model: Model, *, outscale: float | None = None, alpha_mode: str = "model",
                  options: EngineOptions | None = None) -> Any:
    """One-shot convenience: prepare ``model`` and upscale one image (any kind ``Upscaler.upscale``
    takes; the result is of the same kind)."""
    pixels, alpha, back = as_planes(image)
    up = Upscaler(model, options, work=_workload(pixels, alpha, alpha_mode))
    return back(*up._upscale_planes(pixels, alpha, outscale, alpha_mode, None, None))


DEFAULT_NAME = "{stem}_x{scale}"
NAME_FIELDS = ("stem", "scale")


def check_name(name: str, *, per_input: bool = False) -> None:
    """``UsageError`` unless ``name`` is an output name template: text with only ``{stem}`` and
    ``{scale}`` fields, no folder separator, and (``per_input``, for a folder) ``{stem}``, so that two
    inputs never share an output."""
    import string

    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(name) if field is not None]
    except ValueError as err:
        raise errors.UsageError(f"name {name!r} is not a template ({err})", params=("name",)) from None
    unknown = sorted({f for f in fields if f not in NAME_FIELDS})
    if unknown:
        raise errors.UsageError(f"name {name!r}: unknown field {{{unknown[0]}}}; use {{stem}} and {{scale}}",
                                params=("name",))
    if "/" in name or "\\" in name or not name.format(stem="a", scale="4").strip(". "):
        raise errors.UsageError(f"name {name!r} must be a file name without folders", params=("name",))
    if per_input and "stem" not in fields:
        raise errors.UsageError(f"name {name!r} needs {{stem}}: every image of the folder would get the same "
                                "output name", params=("name",))


def default_output_path(src: str | Path, outscale: float, output_format: str | None = None,
                        name: str = DEFAULT_NAME) -> Path:
    """The output beside the input, named by the template ``name`` (default ``{stem}_x{scale}``: the
    scale printed without a trailing .0) and the extension ``io.output_extension`` gives: the input's,
    or .png for a format that is read and not written."""
    src = Path(src)
    stem = name.format(stem=src.stem, scale=f"{outscale:g}")
    return src.with_name(f"{stem}{output_extension(src.suffix, output_format)}")
