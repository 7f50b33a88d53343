"""`upscale interp`: blend a PSNR and a GAN training of one network into a new weights file.

    upscale interp --alpha 0.8                      the default model and its GAN twin
    upscale interp --alpha 0.8 -m esrgan            a registry model and its registered twin
    upscale interp --alpha 0.8 --psnr A --gan B     two files (or registry names)

Without -o the result goes to ./<model>-interp-a<alpha>.safetensors, which is printed. An existing
output is replaced only with --force; an output that is one of the inputs is always refused.
"""

from __future__ import annotations

from pathlib import Path

import click

from . import handle_errors, say
from .convert import check_output

DEFAULT_SCALE = 4.0  # the scale whose default model `interp` mixes when no model is named


def default_output(label: str, alpha: float) -> Path:
    """``./<label>-interp-a0.80.safetensors`` in the current folder."""
    return Path(f"{label}-interp-a{alpha:.2f}.safetensors")


def pick_pair(model: str | None, psnr: str | None, gan: str | None) -> tuple[str, str, str]:
    """(psnr, gan, label for the default output) from the options: both files/names as given, or the
    registered twins of -m NAME (default: the default model)."""
    from .. import errors, registry
    from ..resolve import twin_pair

    if model is not None and (psnr or gan):
        raise errors.UsageError("give -m NAME or --psnr and --gan, not both")
    if (psnr is None) != (gan is None):
        raise errors.UsageError("give both --psnr and --gan (or -m NAME of a registry model that has a twin)")
    if psnr is not None and gan is not None:
        return psnr, gan, Path(gan).stem if Path(gan).is_file() else gan
    if model is not None and Path(model).is_file():
        raise errors.UsageError(f"-m takes a registry model with a twin, not a file; for two files pass "
                                f"--psnr FILE --gan FILE (got -m {model})")
    spec = registry.get_model(model) if model is not None else registry.default_model_for_scale(DEFAULT_SCALE)
    if spec is None or spec.twin is None:
        with_twins = ", ".join(s.name for s in registry.all_models() if s.twin and s.kind == "gan")
        what = "no default model is installed" if spec is None else (
            f"{'the default model ' if model is None else ''}{spec.name} has no GAN twin yet")
        raise errors.UsageError(f"{what}; pass --psnr FILE --gan FILE, or -m NAME of a registry model that "
                                f"has a twin ({with_twins or 'none registered'})")
    psnr_spec, gan_spec = twin_pair(spec)
    return psnr_spec.name, gan_spec.name, spec.name


@click.command()
@click.option("--alpha", type=float, required=True, help="0 = the PSNR model, 1 = the GAN model.")
@click.option("-m", "--model", default=None, metavar="NAME",
              help="A registry model with a registered PSNR/GAN twin (default: the default model).")
@click.option("--psnr", default=None, metavar="NAME|PATH",
              help="The PSNR-oriented network (registry name or weights file); with --gan.")
@click.option("--gan", default=None, metavar="NAME|PATH",
              help="The GAN network (registry name or weights file); with --psnr.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output .safetensors file (default: ./<model>-interp-a<alpha>.safetensors).")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists (never one of the inputs).")
@handle_errors
def interp(alpha: float, model: str | None, psnr: str | None, gan: str | None, output: Path | None,
           force: bool) -> None:
    """Network interpolation: theta = (1 - alpha) * theta_psnr + alpha * theta_gan, over every tensor."""
    from .. import loading
    from ..interp import check_alpha, interpolation_metadata
    from ..resolve import interpolate_files, weights_file

    check_alpha(alpha)
    psnr, gan, label = pick_pair(model, psnr, gan)
    output = output or default_output(label, alpha)
    typed = tuple(Path(p) for p in (psnr, gan) if Path(p).is_file())
    check_output(output, typed, force, exists_is_usage=False)       # before any download
    psnr_path, gan_path = weights_file(psnr), weights_file(gan)
    check_output(output, (psnr_path, gan_path), True, exists_is_usage=False)  # a registry model's file too
    arch, hparams, sd = interpolate_files(psnr_path, gan_path, alpha)
    # built and loaded strictly first, as every run will: nothing is written that would not load
    loading.model_from_state_dict(sd, arch, hparams, source=f"{psnr} + {gan}")
    loading.save_model(output, sd, arch, hparams, extra_metadata=interpolation_metadata(psnr, gan, alpha))
    say(f"wrote {output}: {arch} x{hparams.get('scale', '?')}, alpha={alpha:g} between {psnr} (0) and {gan} (1)")
