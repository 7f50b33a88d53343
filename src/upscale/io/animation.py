"""Animated images (GIF, animated WebP and PNG) as a sequence of ``Image`` frames, and back.

Reading: every frame of a GIF, WebP or APNG as Pillow composes it (each a full canvas: GIF disposal
and WebP/APNG blending already applied; an APNG's default image, outside its animation, left out),
turned upright by the file's EXIF orientation as a still is, as RGB with an alpha channel where any
frame has transparency, 8 bit; the frame durations (ms) and loop count; the file's ICC profile, EXIF
and XMP (orientation reset to 1 in both). The pixel limit covers all frames together.
Writing: APNG (``.png``) or animated WebP (``.webp``) through Pillow, atomically; other formats hold no
animation and are refused before any work (``check_animation_output``). A GIF is never written: 256
colours would undo the upscale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageSequence, PngImagePlugin

from .. import errors
from ..atomic import atomic_file
from .image import DEFAULT_QUALITY, Image, one_line
from .exif import exif_of, fit_exif, orient
from .opening import load_pixels, open_image, pillow_warnings
from .read import check_file, read_image
from .write import check_output, save_whole
from .xmp import png_itxt, xmp_of

log = logging.getLogger(__name__)

ANIMATED_FORMATS = ("PNG", "WEBP")            # written
ANIMATION_SOURCES = ("GIF", "PNG", "WEBP")     # read as animations (other multi-image files are not)
DEFAULT_DURATION_MS = 100   # a frame whose file names no duration


@dataclass(frozen=True, eq=False)
class Animation:
    """Frames of one size with what is needed to play them back (``durations_ms``: one per frame, or
    empty for ``DEFAULT_DURATION_MS`` each)."""

    frames: list[Image]
    durations_ms: list[int] = field(default_factory=list)
    loop: int = 0                # 0 = forever
    source_format: str = ""


def read_frames(path: str | Path, *, max_pixels: int | None = None) -> Image | Animation:
    """Every frame of ``path`` as an ``Animation`` where it holds two or more (from its header), else
    ``read_image(path)`` (16 bit, EXIF, XMP and all): each file is decoded once."""
    path = Path(path)
    if is_animation(path):
        return read_animation(path, max_pixels=max_pixels)
    return read_image(path, max_pixels=max_pixels)


def is_animation(path: str | Path) -> bool:
    """Whether ``read_frames`` reads ``path`` as an animation: a GIF, WebP or PNG with two or more
    frames, or an APNG whose default image is not its one frame. ``ImageReadError`` naming it."""
    path = Path(path)
    check_file(path)
    im, _, _ = open_image(path)
    with im:
        frames = _animation_frames(im)
        return frames > 1 or (frames == 1 and bool(_default_image(im)))


def frame_count(path: str | Path) -> int:
    """How many animation frames ``path`` holds, from its header: a GIF's, WebP's or PNG's (an APNG's
    default image, which is not part of its animation, not counted); 1 for any other file (a TIFF's
    pages and an MPO's second picture are not frames). ``ImageReadError`` naming the file."""
    path = Path(path)
    check_file(path)
    im, _, _ = open_image(path)
    with im:
        return _animation_frames(im)


def _animation_frames(im: PILImage.Image) -> int:
    if im.format not in ANIMATION_SOURCES:
        return 1
    return int(getattr(im, "n_frames", 1) or 1) - _default_image(im)


def _default_image(im: PILImage.Image) -> int:
    """1 when ``im`` is an APNG whose first image is its default image, shown by viewers without APNG
    and not part of the animation; else 0."""
    return int(im.format == "PNG" and bool(im.info.get("default_image")))


def read_animation(path: str | Path, *, max_pixels: int | None = None) -> Animation:
    """Every frame of ``path``; ``ImageReadError`` naming the file for anything wrong with it."""
    path = Path(path)
    check_file(path)
    im, default_limit, _ = open_image(path)
    with im:
        limit = max_pixels if max_pixels is not None else default_limit
        skip = _default_image(im)
        count = int(getattr(im, "n_frames", 1) or 1) - skip
        w, h = im.size
        if limit is not None and w * h * count > limit:
            raise errors.ImageReadError(
                f"{count} frames of {w}x{h} = {w * h * count:,} pixels is over the limit of {limit:,} pixels "
                "(decompression-bomb guard); raise max_pixels if you trust this file", path=path,
                params=("max_pixels",))
        with pillow_warnings():     # the file's own metadata, read as a still's is (before any seek)
            orientation, exif, exif_problem = exif_of(im)
        xmp, xmp_problem = xmp_of(im)
        for problem in (exif_problem, xmp_problem):
            if problem:
                log.warning("%s: %s", path, problem)
        rgba, durations = [], []
        try:
            for index, frame in enumerate(ImageSequence.Iterator(im)):
                if index < skip:
                    continue
                load_pixels(frame, path)
                rgba.append(orient(np.asarray(frame.convert("RGBA")), orientation))
                durations.append(int(frame.info.get("duration") or DEFAULT_DURATION_MS))
        except (OSError, ValueError, EOFError) as err:
            raise errors.ImageReadError(f"cannot read frame {len(rgba) + 1} ({one_line(err)})", path=path) from None
        # a GIF without a loop extension plays once; APNG and WebP always say (0 = forever)
        loop = int(im.info["loop"]) if im.info.get("loop") is not None else 1
        icc, source_format = im.info.get("icc_profile") or None, im.format or ""
    transparent = any((a[..., 3] < 255).any() for a in rgba)
    frames = [Image(np.ascontiguousarray(a[..., :3]), np.ascontiguousarray(a[..., 3]) if transparent else None,
                    icc_profile=icc, exif=exif, source_format=source_format,
                    source_mode="RGBA" if transparent else "RGB", frames=len(rgba), xmp=xmp) for a in rgba]
    return Animation(frames, durations, loop, source_format)


def check_animation_output(path: str | Path, format: str | None = None, quality: int | None = None,
                           size: tuple[int, int] | None = None) -> str:
    """``write.check_output`` plus: the format holds an animation (APNG or WebP). Returns its name."""
    fmt = check_output(path, format, quality, size)
    check_animated(path, fmt)
    return fmt


def check_animated(path: str | Path, fmt: str) -> None:
    """``ImageWriteError`` naming ``path`` when format ``fmt`` holds no animation (not APNG or WebP)."""
    if fmt not in ANIMATED_FORMATS:
        raise errors.ImageWriteError(f"{fmt} holds no animation; write .png (APNG) or .webp for every frame",
                                     path=path)


def write_animation(animation: Animation, path: str | Path, *, format: str | None = None,
                    quality: int | None = None) -> None:
    """Write every frame of ``animation`` to ``path`` (APNG or animated WebP) atomically."""
    path = Path(path)
    if not animation.frames:
        raise errors.UsageError("an animation needs at least one frame", path=path)
    h, w = animation.frames[0].pixels.shape[:2]
    fmt = check_animation_output(path, format, quality, (w, h))
    durations = list(animation.durations_ms) or [DEFAULT_DURATION_MS] * len(animation.frames)
    if len(durations) != len(animation.frames):
        raise errors.UsageError(f"{len(durations)} durations for {len(animation.frames)} frames", path=path)
    pictures = [PILImage.fromarray(f.pixels if f.alpha is None else np.dstack([f.pixels, f.alpha]))
                for f in animation.frames]
    params: dict[str, object] = {"save_all": True, "append_images": pictures[1:],
                                 "duration": durations, "loop": animation.loop}
    first = animation.frames[0]
    if first.icc_profile:
        params["icc_profile"] = first.icc_profile
    if first.exif:
        params["exif"] = fit_exif(first.exif, w, h)   # its sizes are the output's, no old thumbnail
    if first.xmp and fmt == "WEBP":
        params["xmp"] = first.xmp
    elif first.xmp:             # Pillow's PNG writer takes XMP as the iTXt chunk XMP's spec names
        info = PngImagePlugin.PngInfo()
        info.add(b"iTXt", png_itxt(first.xmp))     # the chunk a still's PNG carries, byte for byte
        params["pnginfo"] = info
    if fmt == "WEBP":
        params["quality"] = quality if quality is not None else DEFAULT_QUALITY["WEBP"]
    try:
        with atomic_file(path, "wb") as f:
            save_whole(pictures[0], f, format=fmt, **params)
    except OSError as err:
        raise errors.ImageWriteError(f"cannot write ({err.strerror or one_line(err)})", path=path) from None
    except (ValueError, RuntimeError) as err:
        raise errors.ImageWriteError(f"cannot encode as animated {fmt} ({one_line(err)})", path=path) from None
