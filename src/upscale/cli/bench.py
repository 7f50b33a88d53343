"""`upscale bench --data DIR -s 4 [-m MODEL ...]`: quality and speed against classic interpolation."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import handle_errors, say
from .options import device_options, engine_options_from, quiet_option, tile_option
from .progress import is_terminal


@click.command("bench")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of HR images (e.g. Set5); each is mod-cropped to a multiple of the scale.")
@click.option("-s", "--scale", "scales", type=click.IntRange(min=1), multiple=True, default=(4,), show_default=True,
              help="Integer scale; repeat for several (-s 2 -s 3 -s 4).")
@click.option("-m", "--model", "models", multiple=True, metavar="NAME|PATH",
              help="Registry name or weights file to compare; repeatable.")
@click.option("--lr", "lr_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of LR inputs paired with the HR images by file stem "
                   "(default: MATLAB-compatible bicubic downsampling of HR).")
@click.option("--baselines", default=",".join(("nearest", "bilinear", "bicubic", "lanczos")), show_default=True,
              help="Comma-separated classic methods to include ('' for none).")
@click.option("--rgb", "rgb_metrics", is_flag=True, help="PSNR/SSIM on RGB instead of the Y channel.")
@click.option("--gray", type=click.Choice(["y", "rgb"]), default="y", show_default=True,
              help="Grayscale HR images: compare the gray plane as Y (MATLAB scripts, published tables) "
                   "or repeat to RGB and take BT.601 Y (BasicSR's Python metrics).")
@click.option("--lpips/--no-lpips", default=True, show_default=True,
              help="LPIPS when the lpips package and its AlexNet weights are on this machine.")
@click.option("--niqe", "niqe", is_flag=True,
              help="Also NIQE (no-reference, lower is better) of every output and of the HR images themselves; "
                   "images need two whole 96x96 patches inside the border.")
@click.option("--warmup", "warmup_runs", type=int, default=1, show_default=True,
              help="Untimed runs of each method on the first image before timing.")
@click.option("--json", "fmt", flag_value="json", help="Print the results as JSON (schema upscale.bench/1).")
@click.option("--csv", "fmt", flag_value="csv", help="Print one CSV line per scale and method.")
@click.option("--markdown", "fmt", flag_value="markdown", help="Print only the Markdown table.")
@click.option("--sheet", "sheet_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a contact sheet PNG: the same crop from HR and each method, labelled.")
@click.option("--force", is_flag=True, help="Replace an existing --sheet file.")
@click.option("--sheet-image", "sheet_images", multiple=True, metavar="STEM",
              help="Image(s) shown on the sheet (default: the first); repeatable.")
@click.option("--crop", "crop_px", type=click.IntRange(min=8), default=64, show_default=True,
              help="Side of the sheet's crop, in HR pixels.")
@device_options
@tile_option
@quiet_option("No progress (a bar on a terminal, else a line per method and image).")
@handle_errors
def bench(data_dir: Path, scales: tuple[int, ...], models: tuple[str, ...], lr_dir: Path | None, baselines: str,
          rgb_metrics: bool, gray: str, lpips: bool, niqe: bool, warmup_runs: int, fmt: str | None,
          sheet_path: Path | None, force: bool, sheet_images: tuple[str, ...], crop_px: int, device: str,
          precision: str,
          threads: int | None, compile_mode: str, tile_px: str | None, quiet: bool) -> None:
    """Compare models with nearest, bilinear, bicubic (MATLAB) and Lanczos on a test set.

    \b
    PSNR/SSIM on Y (BT.601), crop border = scale, as in the papers;
    --niqe adds NIQE (on Y, same border) and a row for the HR images' own NIQE;
    seconds per image, output megapixels per second and peak memory per method.
    upscale bench --data Set5 -s 2 -s 3 -s 4
    upscale bench --data Set5 -s 4 -m esrgan --sheet set5_x4.png --json
    """
    from ..bench import BenchOptions, load_models, run_bench, write_sheet

    if sheet_path is not None:
        _check_sheet_target(sheet_path, data_dir, lr_dir, force)
    engine_options = None
    if models:
        engine_options = engine_options_from(device, precision, tile_px, threads=threads, compile_mode=compile_mode)
    options = BenchOptions(
        scales=tuple(dict.fromkeys(scales)), baselines=tuple(b.strip() for b in baselines.split(",") if b.strip()),
        lr_dir=lr_dir, y_channel=not rgb_metrics, gray=gray, warmup_runs=warmup_runs, lpips=lpips, niqe=niqe,
        sheet_images=None if sheet_path is None else tuple(sheet_images), sheet_crop_px=crop_px,
        progress="none" if quiet else "bar" if is_terminal(sys.stderr) else "lines")    # lines: into a log file
    result = run_bench(data_dir, options, load_models(models, engine_options))
    if sheet_path is not None:
        write_sheet(result.sheet_rows, sheet_path)
    if fmt == "json":
        click.echo(result.to_json(), nl=False)
    elif fmt == "csv":
        click.echo(result.to_csv(), nl=False)
    elif fmt == "markdown":
        click.echo(result.to_markdown(), nl=False)
    else:
        env = result.environment
        click.echo(f"{result.data}: {len(result.images)} images, LR {result.lr_source}, "
                   f"metrics on {'Y' if options.y_channel else 'RGB'}, crop border = scale")
        click.echo(result.to_markdown(), nl=False)
        click.echo(f"{env['cpu']} ({env['cpu_count']} cores), python {env['python']}, numpy {env['numpy']}, "
                   f"pillow {env['pillow']}, torch {env['torch']}")
        if sheet_path is not None:
            say(f"contact sheet: {sheet_path}")


def _check_sheet_target(sheet: Path, data_dir: Path, lr_dir: Path | None, force: bool) -> None:
    """Before any work: the sheet may not replace a test image (HR or LR), an existing file without
    ``--force``, or go into a missing folder."""
    from .. import atomic, errors
    from ..dataprep import list_images

    inputs = tuple(list_images(data_dir)) + (tuple(list_images(lr_dir)) if lr_dir is not None else ())
    problem = atomic.target_problem(sheet, inputs, force=force)
    if problem is not None:
        kind, message = problem
        raise errors.ImageWriteError(message, path=sheet, params=("force",) if kind == "exists" else ())
