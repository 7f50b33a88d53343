"""`upscale run IMAGE` (also plain `upscale IMAGE`): upscale one image."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import click

from . import handle_errors

log = logging.getLogger("upscale")


def engine_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Model, tiling, precision and output options shared by `run` and `batch`."""
    options = [
        click.option("-s", "--scale", "outscale", type=float, default=None,
                     help="Output scale, any number > 0 (default: the model's native scale, or 4 with no -m). "
                          "The model runs at its native scale; a Lanczos resize gives the rest."),
        click.option("-m", "--model", "model_name", default=None, metavar="NAME|PATH",
                     help="Registry name (see `upscale models`) or weights file (.safetensors, .pth, ncnn .param). "
                          "Default: the registry's default model for the nearest native scale."),
        click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Weights file to use (same as -m PATH)."),
        click.option("--alpha", "interp_alpha", type=float, default=None,
                     help="Network interpolation with the model's PSNR/GAN twin: 0 = PSNR model, 1 = GAN model."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
                     show_default=True, help="auto: fp16 on CUDA, bf16 on CPUs with avx512_bf16 or AMX, else fp32."),
        click.option("--tile", "tile_px", default=None, metavar="PX|auto|0",
                     help="Tile size in input pixels. auto (default): the size measured fastest for the model's family, "
                          "smaller if memory is short, the whole image if that is no larger; 0 = whole image."),
        click.option("--overlap", "overlap_px", type=int, default=None, help="Tile overlap in input pixels."),
        click.option("--batch", "batch", type=int, default=None, help="Tiles per forward pass."),
        click.option("--threads", type=int, default=None, help="CPU threads (default: all cores)."),
        click.option("--compile", "compile_mode", type=click.Choice(["auto", "on", "off"]), default="auto",
                     show_default=True, help="torch.compile the network (auto: when the work repays it)."),
        click.option("--format", "output_format", type=click.Choice(["png", "jpg", "webp", "tif", "bmp"]),
                     default=None, help="Output format (default: the output file's extension)."),
        click.option("--quality", type=click.IntRange(1, 100), default=None, help="JPEG/WebP quality."),
        click.option("--alpha-mode", type=click.Choice(["model", "bicubic"]), default="model", show_default=True,
                     help="Upscale transparency with the model (as a gray image) or with bicubic."),
        click.option("--max-pixels", type=int, default=None,
                     help="Raise (or lower) the decompression-bomb limit on input pixels."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_upscaler(outscale: float | None, model_name: str | None, weights: Path | None,
                   interp_alpha: float | None, device: str, precision: str, tile_px: str | None,
                   overlap_px: int | None, batch: int | None, threads: int | None, compile_mode: str,
                   work=None):
    """Resolve the model and engine options from the shared flags; returns (Upscaler, outscale).

    ``work``: an ``engine.Workload``, what will go through the model (for ``--compile``)."""
    from ..api import Upscaler, default_model_name, load_model
    from ..engine import EngineOptions

    if weights is not None and model_name is not None:
        raise click.UsageError("give either -m or --weights, not both")
    name = str(weights) if weights is not None else model_name
    if name is None:
        name = default_model_name(outscale if outscale is not None else 4.0)
    model = load_model(name, alpha=interp_alpha)
    kwargs: dict[str, Any] = {"device": device, "precision": precision, "threads": threads, "compile": compile_mode}
    if tile_px is not None:
        kwargs["tile_px"] = tile_px if tile_px == "auto" else _int_option("--tile", tile_px)
    if overlap_px is not None:
        kwargs["overlap_px"] = overlap_px
    if batch is not None:
        kwargs["batch"] = batch
    options = EngineOptions(**kwargs)
    if outscale is not None and outscale != model.scale:
        log.info("model %s is x%d; resizing its output to x%g with Lanczos", model.name or model.source,
                 model.scale, outscale)
    return Upscaler(model, options, work=work), (outscale if outscale is not None else float(model.scale))


def _check_target(image: Path, target: Path, force: bool) -> None:
    """Refuse to overwrite the input, an existing output without --force, or write into no folder."""
    from .. import errors

    if target.resolve() == image.resolve():
        raise errors.ImageWriteError("refusing to overwrite the input image; choose another -o", path=target)
    if target.exists() and not force:
        raise errors.ImageWriteError("exists already; pass --force to overwrite", path=target)
    if not target.parent.is_dir():
        raise errors.ImageWriteError("output folder does not exist", path=target)


def _int_option(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an integer or 'auto'", param_hint=flag) from None


@click.command("run")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output file (default: {stem}_x{scale}.{ext} beside the input).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or info lines.")
@engine_options
@handle_errors
def run(image: Path, output: Path | None, force: bool, quiet: bool, outscale: float | None,
        model_name: str | None, weights: Path | None, interp_alpha: float | None, device: str, precision: str,
        tile_px: str | None, overlap_px: int | None, batch: int | None, threads: int | None, compile_mode: str,
        output_format: str | None, quality: int | None, alpha_mode: str, max_pixels: int | None) -> None:
    """Upscale one IMAGE.

    \b
    Exit codes: 0 ok, 1 failure (bad input, bad weights, cannot write), 2 usage error.
    """
    from tqdm import tqdm

    from ..api import default_output_path, workload_for
    from ..io import read_image, write_image

    if quiet:
        logging.getLogger("upscale").setLevel(logging.WARNING)
    source = read_image(image, max_pixels=max_pixels)  # bad input fails before any model work
    if output is not None:   # a named output is checked before the model is loaded
        _check_target(image, output, force)
    upscaler, scale = build_upscaler(outscale, model_name, weights, interp_alpha, device, precision, tile_px,
                                     overlap_px, batch, threads, compile_mode, work=workload_for(source, alpha_mode))
    target = output
    if target is None:   # the default name depends on the model's scale
        target = default_output_path(image, scale, output_format)
        _check_target(image, target, force)

    bar = tqdm(total=0, unit="tile", disable=quiet, leave=False, desc=image.name)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        result = upscaler.upscale(source, outscale=scale, alpha_mode=alpha_mode, progress=progress)
    finally:
        bar.close()
    write_image(result, target, format=output_format, quality=quality)
    if not quiet:
        h, w = result.pixels.shape[:2]
        click.echo(f"{image} -> {target} ({w}x{h})", err=True)
