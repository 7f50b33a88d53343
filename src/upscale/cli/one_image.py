"""One image through `upscale run`: the steps the single-image command and several images
(``run_many``) share: ``prepare`` (read, and the refusals that need no model), ``check_with_model``
(the refusals that need its scale), ``upscale_one`` (through the network, with progress, written)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from . import say
from .progress import Progress

SAY_EXPECTED_S = 10.0    # an estimate this long is said before the work starts


@dataclass(frozen=True)
class RunSettings:
    """What `run` does with each image, the model and engine aside."""

    force: bool
    frames: str
    quiet: bool
    outscale: float | None
    output_format: str | None
    name_template: str
    quality: int | None
    alpha_mode: str
    max_pixels: int | None
    out_dir: Path | None = None   # -o naming an existing folder: outputs go there, named as beside the input
    make_out_dir: bool = False    # -o NEWDIR/: out_dir is made (its parent exists) when the first output is written

    def default_target(self, image: Path, scale: float) -> Path:
        """The output of ``image`` at ``scale`` when -o names no file: the default name (or --name),
        beside the input or in ``out_dir``."""
        from .. import api

        target = api.default_output_path(image, scale, self.output_format, self.name_template)
        return target if self.out_dir is None else self.out_dir / target.name


def input_paths(images: tuple[str, ...]) -> tuple[Path, ...]:
    """IMAGE... as typed, as paths; an empty one (an unset shell variable) is a usage error (``Path("")``
    would be the current folder)."""
    from .. import errors

    for at, image in enumerate(images, 1):
        if not image:
            raise errors.UsageError("the input path is empty" + (f" (IMAGE {at} of {len(images)})"
                                                                 if len(images) > 1 else ""))
    return tuple(Path(image) for image in images)


def output_choice(output: str | None, settings: RunSettings) -> tuple[RunSettings, Path | None]:
    """-o as typed: (settings, the output file or None). An existing folder, or a new one written with a
    trailing slash (``-o results/``: made when the first output is written, in a parent that must
    exist), puts the outputs in it under their default names; an empty -o is a usage error."""
    from .. import atomic, errors

    if output is None:
        return settings, None
    if not output:
        raise errors.UsageError("the output path (-o) is empty")
    path = Path(output)
    if path.is_dir():
        return replace(settings, out_dir=path), None
    if not output.endswith(("/", os.sep)):
        return settings, path
    problem = (atomic.folder_problem(path) if os.path.lexists(path)     # a file (or a dangling link)
               else atomic.folder_problem(path.parent) or atomic.write_problem(path.parent))
    if problem is not None:
        raise errors.ImageWriteError(problem, path=output)
    return replace(settings, out_dir=path, make_out_dir=True), None


def folder_message(image: Path) -> str:
    return f"{image} is a folder; for every image in it: upscale batch {image} --out OUT_DIR"


def first_frame(loaded: Any) -> Any:
    """The ``Image`` of a still, or an animation's first frame."""
    from ..io import Animation

    return loaded.frames[0] if isinstance(loaded, Animation) else loaded


def frame_total(loaded: Any) -> int:
    from ..io import Animation

    return len(loaded.frames) if isinstance(loaded, Animation) else 1


def check_target(image: Path, target: Path, hw: tuple[int, int], animated: bool, scale: float | None,
                 settings: RunSettings) -> None:
    """Refusals about the output of ``image`` (``hw``: its size): where it goes and, once the scale is
    known, whether its format holds the output's size (WebP's 16383 px a side, say) or, for an
    animation, every frame."""
    from .. import api, atomic, errors
    from ..io import check_animated, check_animation_output, check_output, check_size

    size = None if scale is None else api.output_size(*hw, scale)[::-1]
    if settings.make_out_dir and settings.out_dir is not None and not settings.out_dir.is_dir():
        # -o NEWDIR/, not made yet (its parent was checked): nothing in it to overwrite; name and format
        problem = atomic.name_problem(target.name)
        if problem is not None:
            raise errors.ImageWriteError(problem, path=target)
        fmt = check_size(target, settings.output_format, size)
        if animated:
            check_animated(target, fmt)
        return
    api.check_target(image, target, force=settings.force, output_format=settings.output_format)
    (check_animation_output if animated else check_output)(target, settings.output_format, settings.quality, size)


def prepare(image: Path, output: Path | None, settings: RunSettings) -> tuple[Any, Path | None]:
    """``image`` read (an ``Animation`` with ``--frames all``) and the refusals that need no model: its
    output (``output``, else the default name when the scale is given) and the output's memory."""
    from .. import api
    from ..io import Animation, output_format_for, read_frames, read_image

    s = settings
    loaded = (read_frames if s.frames == "all" else read_image)(image, max_pixels=s.max_pixels)
    target = output
    if target is None and s.outscale is not None:
        target = s.default_target(image, s.outscale)
    hw = first_frame(loaded).pixels.shape[:2]
    if target is not None:
        check_target(image, target, hw, isinstance(loaded, Animation), s.outscale, s)
    if s.outscale is not None:
        api.check_output_memory(first_frame(loaded), s.outscale, path=image, frames=frame_total(loaded),
                                encoder=None if target is None else output_format_for(target, s.output_format))
    return loaded, target


def check_with_model(image: Path, loaded: Any, target: Path | None, model: Any,
                     settings: RunSettings) -> tuple[Path, float]:
    """(target, scale) once the model is known: the default name and the output's size depend on its
    scale; the memory check now counts the resize's buffer."""
    from .. import api
    from ..io import Animation, output_format_for

    s = settings
    scale = api.outscale_for(model, s.outscale)
    if target is None or s.outscale is None:
        target = target or s.default_target(image, scale)
        check_target(image, target, first_frame(loaded).pixels.shape[:2], isinstance(loaded, Animation), scale, s)
    api.check_output_memory(first_frame(loaded), scale, native_scale=model.scale, path=image,
                            frames=frame_total(loaded), encoder=output_format_for(target, s.output_format))
    return target, scale


def upscale_one(upscaler: Any, loaded: Any, image: Path, target: Path, scale: float, settings: RunSettings, *,
                tiles: bool = True) -> str:
    """``loaded`` through the model and written to ``target``; returns the line that says so. Tile (or
    frame) progress unless quiet or not ``tiles``."""
    from ..io import Animation

    quiet = settings.quiet or not tiles
    args = (upscaler, loaded, image, target, scale, settings.alpha_mode, settings.output_format, settings.quality,
            quiet)
    folder = settings.out_dir if settings.make_out_dir else None
    return (_upscale_frames if isinstance(loaded, Animation) else _upscale_still)(*args, make_folder=folder)


def _upscale_still(upscaler: Any, source: Any, image: Path, target: Path, scale: float, alpha_mode: str,
                   output_format: str | None, quality: int | None, quiet: bool, make_folder: Path | None) -> str:
    """One image through the model, with tile progress (and, when the tuned estimate is long, that
    estimate first: one window has no progress to show), then written; the line that says so."""
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
    with _output_folder(make_folder):
        api.write_result(result, target, output_format=output_format, quality=quality)
    h, w = result.pixels.shape[:2]
    return f"{image} -> {target} ({w}x{h})"


def _upscale_frames(upscaler: Any, animation: Any, image: Path, target: Path, scale: float, alpha_mode: str,
                    output_format: str | None, quality: int | None, quiet: bool, make_folder: Path | None) -> str:
    """``run --frames all`` on an animated input: every frame, with frame progress, then one animated
    output (every frame's output was checked against memory before the model loaded); the line that
    says so."""
    from ..io import write_animation

    progress = Progress(image.name, "frame", quiet=quiet, leave=False)
    try:
        with _naming(image):
            result = upscaler.upscale_animation(animation, outscale=scale, alpha_mode=alpha_mode,
                                                on_frame=progress.update)
    finally:
        progress.close()
    with _output_folder(make_folder):
        write_animation(result, target, format=output_format, quality=quality)
    h, w = result.frames[0].pixels.shape[:2]
    return f"{image} -> {target} ({w}x{h}, {len(result.frames)} frames)"


@contextlib.contextmanager
def _output_folder(folder: Path | None) -> Iterator[None]:
    """-o NEWDIR/: the folder made (as ``mkdir``: its parent exists) just before an output is written
    into it, and removed again when that write fails and leaves it empty: a failed run makes nothing."""
    from .. import atomic, errors

    made = False
    if folder is not None and not folder.is_dir():
        try:
            folder.mkdir()
            made = True
        except FileExistsError:
            pass        # made meanwhile (by another run); the write says if it is not a folder
        except OSError as err:
            raise errors.ImageWriteError(f"cannot create the output folder ({atomic.os_reason(err, folder)})",
                                         path=folder) from None
    try:
        yield
    except BaseException:
        if made and folder is not None:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


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
