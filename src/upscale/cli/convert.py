"""`upscale convert IN [OUT]`: any weights layout we can read (or an ncnn .param/.bin pair) -> safetensors."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from . import handle_errors, say

log = logging.getLogger(__name__)


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
@click.option("--authors-layout", is_flag=True,
              help="Write the network in its authors' key layout where ours differs (SPAN: the trained "
                   "branches plus every collapsed eval_conv kernel, the layout spandrel/chaiNNer and "
                   "traiNNer-redux detect; a deploy-form input gets equivalent branches).")
@handle_errors
def convert(src: Path, dst: Path | None, bin_path: Path | None, force: bool, deploy: bool,
            authors_layout: bool) -> None:
    """Convert IN (.pth/.pt/.ckpt/.safetensors in any known layout, or an ncnn .param) to OUT.safetensors
    with architecture metadata, after checking that it loads strictly into the detected network."""
    from .. import errors, loading
    from ..archs import get_family
    from ..resolve import NCNN_SUFFIX, open_weights

    if deploy and authors_layout:
        raise errors.UsageError("--deploy and --authors-layout ask for two different layouts; use one",
                                params=("deploy", "authors_layout"))
    dst = dst or default_output(src)
    ncnn = src.suffix.lower() == NCNN_SUFFIX
    if bin_path is not None and not ncnn:
        raise errors.UsageError("--bin is only for ncnn .param inputs")
    inputs = (src, bin_path or src.with_suffix(".bin")) if ncnn else (src,)
    check_output(dst, inputs, force)

    model = open_weights(src, bin_path)
    extra = {"upscale.converted_from": src.name}
    if ncnn:
        how = "its ncnn graph"
    else:
        how = "our metadata" if loading.META_ARCH in model.metadata else "its keys and shapes"
        if model.metadata.get(loading.META_BF16_SAFE):
            extra[loading.META_BF16_SAFE] = model.metadata[loading.META_BF16_SAFE]
    sd, hparams = loading.model_state_dict(model), model.hparams
    family = get_family(model.arch)
    if authors_layout:
        relayout = family.authors_layout
        if relayout is None:
            raise errors.UsageError(f"{src}: {model.arch} files already use the authors' keys; drop "
                                    "--authors-layout", params=("authors_layout",))
        try:
            sd, hparams = relayout(sd, hparams)
        except ValueError as exc:
            raise errors.UsageError(f"{src}: cannot be written with --authors-layout: {exc}",
                                    params=("authors_layout",)) from None
        # read back as another tool reads such a file: from its keys alone; the same function
        canonical = loading.canonicalize(sd)
        arch, found = loading.detect(canonical, source=dst)
        check = loading.model_from_state_dict(canonical, arch, found, source=str(dst))
        _check_same_function(model, check, src)
    if deploy:
        collapse = family.deploy
        if collapse is None:
            raise errors.UsageError(f"{src}: {model.arch} has no separate inference form; drop --deploy",
                                    params=("deploy",))
        sd, hparams = collapse(sd, hparams)
        # the deploy form must load strictly and be the same function: checked by building it
        loading.model_from_state_dict(sd, model.arch, hparams, source=str(dst))
    loading.save_model(dst, sd, model.arch, hparams, extra_metadata=extra)
    shown = ", ".join(f"{k}={v}" for k, v in sorted(model.hparams.items()))    # the input's, as read
    log.info("%s: detected %s (%s) from %s", src, model.arch, shown, how)   # an info line: -q drops it
    changed = {k: v for k, v in hparams.items() if model.hparams.get(k) != v}
    say(f"wrote {dst}" + (f" ({', '.join(f'{k}={v}' for k, v in sorted(changed.items()))})" if changed else ""))


def _check_same_function(before, after, src: Path) -> None:
    """Raise ``errors.WeightsError`` when two networks differ on a small random input (a relayout
    must not change what the network computes)."""
    import torch

    from .. import errors

    side = 16 * before.size_multiple
    x = torch.rand(1, before.in_channels, side, side, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = before.module.eval()(x), after.module.eval()(x)
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max())):
        raise errors.WeightsError(f"{src}: the relaid-out network computes something else "
                                  f"(max difference {float((a - b).abs().max()):.3g})", path=src)
