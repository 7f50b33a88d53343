"""`upscale convert IN [OUT]`: any weights layout we can read (or an ncnn .param/.bin pair) -> safetensors."""

from __future__ import annotations

from pathlib import Path

import click

from . import handle_errors


def default_output(src: Path) -> Path:
    """``{stem}.safetensors`` beside the input (``{stem}.converted.safetensors`` when that is the input)."""
    out = src.with_suffix(".safetensors")
    return out if out != src else src.with_name(f"{src.stem}.converted.safetensors")


@click.command()
@click.argument("src", metavar="IN", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dst", metavar="[OUT]", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--bin", "bin_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The ncnn .bin beside a .param input (default: same name, .bin).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@handle_errors
def convert(src: Path, dst: Path | None, bin_path: Path | None, force: bool) -> None:
    """Convert IN (.pth/.pt/.ckpt/.safetensors in any known layout, or an ncnn .param) to OUT.safetensors
    with architecture metadata, after checking that it loads strictly into the detected network."""
    from .. import archs, errors, loading

    dst = dst or default_output(src)
    if dst.suffix.lower() != ".safetensors":
        raise errors.UsageError(f"{dst}: the output must be a .safetensors file")
    if dst.resolve() == src.resolve():
        raise errors.UsageError(f"{dst}: the output would overwrite the input")
    if dst.exists() and not force:
        raise errors.UsageError(f"{dst} exists; pass --force to overwrite it")

    extra = {"upscale.converted_from": src.name}
    if src.suffix.lower() == ".param":
        from ..ncnn import read_ncnn

        arch, hparams, sd = read_ncnn(src, bin_path or src.with_suffix(".bin"))
        hparams = {**archs.get_family(arch).defaults, **hparams}
        how = "ncnn graph"
    else:
        if bin_path is not None:
            raise errors.UsageError("--bin is only for ncnn .param inputs")
        raw, metadata = loading.read_state_dict(src)
        sd = loading.canonicalize(raw)
        arch, hparams = loading.detect(sd, metadata, source=src)
        how = "our metadata" if loading.META_ARCH in metadata else "keys and shapes"
        if metadata.get(loading.META_BF16_SAFE):
            extra[loading.META_BF16_SAFE] = metadata[loading.META_BF16_SAFE]
    module = archs.build_module(arch, hparams)
    loading.load_strict(module, sd, source=src, arch=arch)
    loading.save_model(dst, loading.model_state_dict(module), arch, hparams, extra_metadata=extra)
    shown = ", ".join(f"{k}={v}" for k, v in sorted(hparams.items()))
    click.echo(f"{src}: detected {arch} ({shown}) from its {how}")
    click.echo(f"wrote {dst}")
