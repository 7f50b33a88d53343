"""`upscale run IMAGE` (also plain `upscale IMAGE`): upscale one image."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import click

from . import handle_errors, say
from .options import (engine_options_from, frames_option, load_model_from, model_name_from, model_options,
                      quiet_option)
from .progress import Progress


SAY_EXPECTED_S = 10.0    # an estimate this long is said before the work starts


@click.command("run")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output file (default: {stem}_x{scale}.{ext} beside the input; .png for inputs that are "
                   "read but not written, such as GIF or JPEG 2000).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@frames_option
@quiet_option("No progress or info lines.")
@model_options
@handle_errors
def run(image: Path, output: Path | None, force: bool, frames: str, quiet: bool, outscale: float | None,
        model_name: str | None, weights: Path | None, interp_alpha: float | None, device: str, precision: str,
        tile_px: str | None, overlap_px: int | None, batch: int | None, threads: int | None, compile_mode: str,
        output_format: str | None, name_template: str, quality: int | None, alpha_mode: str,
        max_pixels: int | None) -> None:
    """Upscale one IMAGE.

    \b
    Exit codes: 0 ok, 1 failure (bad input, bad weights, cannot write, not enough memory), 2 usage error.
    """
    from .. import api, errors
    from ..io import Animation, check_animation_output, check_output, output_format_for, read_frames, read_image

    # everything that can be refused is refused before the model loads
    if image.is_dir():
        raise errors.UsageError(f"{image} is a folder; for every image in it: upscale batch {image} --out OUT_DIR")
    api.check_outscale(outscale)
    api.check_name(name_template)
    options = engine_options_from(device, precision, tile_px, overlap_px, batch, threads, compile_mode)
    name = model_name_from(model_name, weights, outscale)
    loaded = (read_frames if frames == "all" else read_image)(image, max_pixels=max_pixels)
    animation = loaded if isinstance(loaded, Animation) else None
    source = animation.frames[0] if animation else loaded

    def check(target: Path, scale: float | None) -> None:
        """Refusals about the output: where it goes and, once the scale is known, whether its format
        holds the output's size (WebP's 16383 px a side, say) or, for every frame, an animation."""
        api.check_target(image, target, force=force, output_format=output_format)
        h, w = source.pixels.shape[:2]
        size = None if scale is None else api.output_size(h, w, scale)[::-1]
        (check_animation_output if animation else check_output)(target, output_format, quality, size)

    target = output
    if target is None and outscale is not None:
        target = api.default_output_path(image, outscale, output_format, name_template)
    if target is not None:
        check(target, outscale)
    frames = len(animation.frames) if animation else 1
    if outscale is not None:
        api.check_output_memory(source, outscale, path=image, frames=frames,
                                encoder=None if target is None else output_format_for(target, output_format))

    model = load_model_from(name, outscale, interp_alpha)
    scale = api.outscale_for(model, outscale)
    if target is None or outscale is None:   # the default name, and the size, depend on the model's scale
        target = target or api.default_output_path(image, scale, output_format, name_template)
        check(target, scale)
    api.check_output_memory(source, scale, native_scale=model.scale, path=image,    # with the resize's buffer
                            frames=frames, encoder=output_format_for(target, output_format))
    upscaler = api.Upscaler(model, options, work=api.workload_for(source, alpha_mode))
    if animation:
        _upscale_frames(upscaler, animation, image, target, scale, alpha_mode, output_format, quality, quiet)
    else:
        _upscale_still(upscaler, source, image, target, scale, alpha_mode, output_format, quality, quiet)


def _upscale_still(upscaler: Any, source: Any, image: Path, target: Path, scale: float, alpha_mode: str,
                   output_format: str | None, quality: int | None, quiet: bool) -> None:
    """One image through the model, with tile progress (and, when the tuned estimate is long, that
    estimate first: one window has no progress to show), then written."""
    from .. import api

    expected = upscaler.engine.expected_s(*source.pixels.shape[:2])
    if expected is not None and expected >= SAY_EXPECTED_S and not quiet:
        passes = api.model_passes(source, alpha_mode)
        say(f"{image}: about {expected * passes:.0f} s of model time (as `upscale tune` measured here)", err=True)
    progress = Progress(image.name, "tile", quiet=quiet, leave=False)
    try:
        with _naming(image):
            result = upscaler.upscale(source, outscale=scale, alpha_mode=alpha_mode, progress=progress.update)
    finally:
        progress.close()
    api.write_result(result, target, output_format=output_format, quality=quality)
    if not quiet:
        h, w = result.pixels.shape[:2]
        say(f"{image} -> {target} ({w}x{h})", err=True)


def _upscale_frames(upscaler: Any, animation: Any, image: Path, target: Path, scale: float, alpha_mode: str,
                    output_format: str | None, quality: int | None, quiet: bool) -> None:
    """``run --frames all`` on an animated input: every frame, with frame progress, then one animated
    output (every frame's output was checked against memory before the model loaded)."""
    from ..io import write_animation

    progress = Progress(image.name, "frame", quiet=quiet, leave=False)
    try:
        with _naming(image):
            result = upscaler.upscale_animation(animation, outscale=scale, alpha_mode=alpha_mode,
                                                on_frame=progress.update)
    finally:
        progress.close()
    write_animation(result, target, format=output_format, quality=quality)
    if not quiet:
        h, w = result.frames[0].pixels.shape[:2]
        say(f"{image} -> {target} ({w}x{h}, {len(result.frames)} frames)", err=True)


@contextlib.contextmanager
def _naming(image: Path) -> Iterator[None]:
    """Running out of memory in the model's run (the engine knows no file name) names the image."""
    from .. import errors

    try:
        yield
    except errors.ResourceError as err:
        if err.path is not None:
            raise
        raise errors.ResourceError(err.message, path=image, params=err.params) from None
