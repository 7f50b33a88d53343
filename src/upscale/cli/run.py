"""`upscale run IMAGE...` (also plain `upscale IMAGE...`): upscale one image, or several with the model
loaded once (``run_many``); each image takes the steps in ``one_image``."""

from __future__ import annotations

from pathlib import Path

import click

from . import handle_errors, say
from .one_image import (RunSettings, check_with_model, first_frame, folder_message, input_paths, output_choice,
                        prepare, upscale_one)
from .options import (engine_options_from, frames_option, load_model_from, model_name_from, model_options,
                      quiet_option)


@click.command("run")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...", type=click.Path())
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Output file (default: {stem}_x{scale}.{ext} beside the input; .png for inputs that are "
                   "read but not written, such as GIF or JPEG 2000), or an existing folder to put the output "
                   "(or, with several IMAGEs, their outputs) in under that name; a new folder with a "
                   "trailing slash (-o results/) is made when the first output is written.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@frames_option
@quiet_option("No progress or info lines.")
@model_options
@handle_errors
def run(images: tuple[str, ...], output: str | None, force: bool, frames: str, quiet: bool,
        outscale: float | None, model_name: str | None, weights: Path | None, interp_alpha: float | None,
        device: str, precision: str, tile_px: str | None, overlap_px: int | None, batch: int | None,
        threads: int | None, compile_mode: str, output_format: str | None, name_template: str,
        quality: int | None, alpha_mode: str, max_pixels: int | None) -> None:
    """Upscale one IMAGE, or several (a shell glob: upscale *.jpg -s 4).

    With several IMAGEs the model loads once and each output goes beside its input, named as for one
    (or into the existing folder -o names). What can be refused before any image is upscaled (a
    missing or unreadable file, a folder, an existing output without --force, an output over an
    input, two inputs with one output name, the output format's limits, memory) is said first, one
    line per file, and the other images go on; a file that fails to decode fails in its turn. One
    line per image written; Ctrl-C stops at once and leaves only whole outputs.

    \b
    Exit codes: 0 ok, 1 failure (bad input, bad weights, cannot write, not enough memory), 2 usage error,
    130 interrupted. With several IMAGEs: 0 all written, 3 some failed (one line each), 1 none written.
    """
    from .. import api, errors

    settings = RunSettings(force, frames, quiet, outscale, output_format, name_template, quality, alpha_mode,
                           max_pixels)
    # everything that can be refused is refused before the model loads
    paths = input_paths(images)
    settings, target = output_choice(output, settings)    # -o DIR (or NEWDIR/): the outputs go in it
    if len(paths) > 1:
        from .run_many import check_output_folder, run_many
        check_output_folder(target)
    elif paths[0].is_dir():
        raise errors.UsageError(folder_message(paths[0]))
    api.check_outscale(outscale)
    api.check_name(name_template)
    options = engine_options_from(device, precision, tile_px, overlap_px, batch, threads, compile_mode)
    name = model_name_from(model_name, weights, outscale)
    if len(paths) > 1:
        run_many(paths, settings, options, lambda: load_model_from(name, outscale, interp_alpha, options))
        return      # run_many exits with its own code
    image = paths[0]
    loaded, target = prepare(image, target, settings)
    model = load_model_from(name, outscale, interp_alpha, options)
    target, scale = check_with_model(image, loaded, target, model, settings)
    upscaler = api.Upscaler(model, options, work=api.workload_for(first_frame(loaded), alpha_mode))
    line = upscale_one(upscaler, loaded, image, target, scale, settings)
    if not quiet:
        say(line, err=True)
