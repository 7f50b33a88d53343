"""`upscale interp`: blend a PSNR and a GAN training of one network into a new weights file."""

from __future__ import annotations

from pathlib import Path

import click

from . import handle_errors


def resolve_weights(name_or_path: str) -> Path:
    """An existing file as it is; otherwise a registry name, fetched and verified through ``hub``."""
    from .. import hub, registry

    path = Path(name_or_path)
    if path.is_file():
        return path
    return hub.weights_path(registry.get_model(name_or_path))


@click.command()
@click.option("--alpha", type=float, required=True, help="0 = the PSNR model, 1 = the GAN model.")
@click.option("--psnr", default="esrgan-psnr", show_default=True, metavar="NAME|PATH",
              help="The PSNR-oriented network (registry name or weights file).")
@click.option("--gan", default="esrgan", show_default=True, metavar="NAME|PATH",
              help="The GAN network (registry name or weights file).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output .safetensors file.")
@handle_errors
def interp(alpha: float, psnr: str, gan: str, output: Path) -> None:
    """Network interpolation: theta = (1 - alpha) * theta_psnr + alpha * theta_gan, over every tensor."""
    from .. import errors, loading
    from ..interp import check_alpha, interpolate_files, interpolation_metadata

    check_alpha(alpha)
    if output.suffix.lower() != ".safetensors":
        raise errors.UsageError(f"{output}: the output must be a .safetensors file")
    arch, hparams, sd = interpolate_files(resolve_weights(psnr), resolve_weights(gan), alpha)
    loading.save_model(output, sd, arch, hparams, extra_metadata=interpolation_metadata(psnr, gan, alpha))
    click.echo(f"wrote {output}: {arch} x{hparams.get('scale', '?')}, alpha={alpha:g} between {psnr} (0) and {gan} (1)")
