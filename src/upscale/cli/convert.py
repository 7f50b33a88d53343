"""`upscale convert IN [OUT]`: any weights layout we can read (or an ncnn .param/.bin pair) -> safetensors."""

from __future__ import annotations

from pathlib import Path

import click

from . import handle_errors


def default_output(src: Path) -> Path:
    """``{stem}.safetensors`` beside the input (``{stem}.converted.safetensors`` when that is the input)."""
    out = src.with_suffix(".safetensors")
    return out if out != src else src.with_name(f"{src.stem}.converted.safetensors")


def check_output(dst: Path, inputs: tuple[Path, ...], force: bool, *, exists_is_usage: bool = True) -> None:
    """Before anything is read: refuse an OUT that is not .safetensors, that is one of the inputs (even
    with --force), whose folder is missing or a file, or that exists without --force (a usage error for
    `convert`, as it always was; a write failure, exit 1, for `interp`, as for `run`)."""
    from .. import errors

    if dst.suffix.lower() != ".safetensors":
        raise errors.UsageError(f"{dst}: the output must be a .safetensors file")
    from ..atomic import target_problem

    problem = target_problem(dst, inputs, force=force)
    if problem is None:
        return
    kind, message = problem
    usage = exists_is_usage and kind in ("input", "exists")
    raise (errors.UsageError if usage else errors.WeightsWriteError)(
        message, path=dst, params=("force",) if kind == "exists" else ())


@click.command()
@click.argument("src", metavar="IN", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dst", metavar="[OUT]", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--bin", "bin_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The ncnn .bin beside a .param input (default: same name, .bin).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@click.option("--deploy", is_flag=True,
              help="Write the inference form of a re-parameterised network (SPAN: each trained conv branch "
                   "collapsed into its one 3x3 kernel; same output, about a quarter of the parameters).")
@handle_errors
def convert(src: Path, dst: Path | None, bin_path: Path | None, force: bool, deploy: bool) -> None:
    """Convert IN (.pth/.pt/.ckpt/.safetensors in any known layout, or an ncnn .param) to OUT.safetensors
    with architecture metadata, after checking that it loads strictly into the detected network."""
    from .. import errors, loading
    from ..resolve import NCNN_SUFFIX, open_weights

    dst = dst or default_output(src)
    ncnn = src.suffix.lower() == NCNN_SUFFIX
    if bin_path is not None and not ncnn:
        raise errors.UsageError("--bin is only for ncnn .param inputs")
    inputs = (src, bin_path or src.with_suffix(".bin")) if ncnn else (src,)
    check_output(dst, inputs, force)

    model = open_weights(src, bin_path)
    extra = {"upscale.converted_from": src.name}
    if ncnn:
        how = "ncnn graph"
    else:
        how = "our metadata" if loading.META_ARCH in model.metadata else "keys and shapes"
        if model.metadata.get(loading.META_BF16_SAFE):
            extra[loading.META_BF16_SAFE] = model.metadata[loading.META_BF16_SAFE]
    sd, hparams = loading.model_state_dict(model), model.hparams
    if deploy:
        from ..archs import get_family

        collapse = get_family(model.arch).deploy
        if collapse is None:
            raise errors.UsageError(f"{src}: {model.arch} has no separate inference form; drop --deploy",
                                    params=("deploy",))
        sd, hparams = collapse(sd, hparams)
        # the deploy form must load strictly and be the same function: checked by building it
        loading.model_from_state_dict(sd, model.arch, hparams, source=str(dst))
    loading.save_model(dst, sd, model.arch, hparams, extra_metadata=extra)
    shown = ", ".join(f"{k}={v}" for k, v in sorted(hparams.items()))
    click.echo(f"{src}: detected {model.arch} ({shown}) from its {how}")
    click.echo(f"wrote {dst}")
