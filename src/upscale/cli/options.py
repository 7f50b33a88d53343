"""Flags shared by `run`, `batch` and `bench`, and the one place that turns them into library values:
``engine_options_from`` builds ``EngineOptions``, ``load_model_from`` resolves -m / --weights / -s
to a ``Model``. Flag wording lives here and in ``cli/__init__.py`` only."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import click

from .. import tuned

log = logging.getLogger("upscale")

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _stack(*options: Decorator) -> Decorator:
    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


# What --tile means (the engine's TILE_HELP, worded as flags; kept here so --help needs no torch import).
TILE_HELP = ("Tile core in input pixels: the stride at which windows advance; context (the model's receptive "
             "radius, or --overlap where the command has it) is added on every side, so a small tile costs time, never seams. auto (default): per image, the plan "
             "(window side, or the whole image) of the fewest seconds by what `upscale tune` measured on this "
             "machine (if not tuned: a built-in window for the model's family, or on backend winograd the whole "
             "image where it fits), never more than memory allows; "
             "0 = whole image.")


# --format's choices (io's FORMAT_BY_EXT, listed here so --help needs no Pillow import; on a Pillow without
# the AVIF codec, avif is refused with io's "unknown output format" before any work)
OUTPUT_FORMATS = ["png", "jpg", "webp", "tif", "bmp", "avif"]

BACKENDS = ("auto", *tuned.BACKENDS)    # engine.options.BACKENDS, without importing torch here
BACKEND_HELP = ("What computes the tiles. auto (default): what `upscale tune` measured fastest for this model, "
                "precision and thread count on this machine (CPU only); for a model not tuned here, fp32 models "
                "winograd computes run on whichever of torch and winograd a one-convolution probe measured faster "
                "(cached), others on torch. openvino: OpenVINO's "
                "CPU plugin on the same network (needs pip install 'upscale[openvino]'). winograd: RRDBNet (esrgan, "
                "x4plus), SRVGGNetCompact (animevideov3), SPAN (the defaults) and SRResNet (SRGAN) models in fp32 "
                "on the CPU with "
                "Winograd convolutions (its C kernels are built once per machine with $CC, default cc, and cached).")
BACKEND_META = "upscale.backend"     # where --backend leaves its value in the click context


def _keep_backend(ctx: click.Context, param: click.Parameter, value: str) -> str:
    ctx.meta[BACKEND_META] = value
    return value


def device_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--device, --precision, --threads, --compile, --backend (run, batch, bench). --backend is not
    passed to the command: ``engine_options_from`` reads it from the click context."""
    return _stack(
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
                     show_default=True, help="auto: fp16 on CUDA; on CPUs with avx512_bf16 or AMX, bf16 where measured faster "
                          "there (`upscale tune`, else a one-convolution probe, cached); else fp32."),
        click.option("--threads", type=int, default=None, help="CPU threads (default: all cores)."),
        click.option("--compile", "compile_mode", type=click.Choice(["auto", "on", "off"]), default="auto",
                     show_default=True, help="torch.compile the network (auto: when the work repays it)."),
        click.option("--backend", type=click.Choice(list(BACKENDS)), default="auto",
                     show_default=True, help=BACKEND_HELP, expose_value=False, callback=_keep_backend),
    )(fn)


def tile_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--tile PX|auto|0 (run, batch, bench)."""
    return click.option("--tile", "tile_px", default=None, metavar="PX|auto|0", help=TILE_HELP)(fn)


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-s, -m, --weights, --alpha, and the tiling, device and output options of `run` and `batch`."""
    return _stack(
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
        device_options,
        tile_option,
        click.option("--overlap", "overlap_px", type=int, default=None,
                     help="Context around each tile, in input pixels (default: the model's receptive radius)."),
        click.option("--batch", "batch", type=int, default=None, help="Tiles per forward pass."),
        click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS),
                     default=None, help="Output format (default: the output file's extension)."),
        click.option("--name", "name_template", default="{stem}_x{scale}", show_default=True, metavar="TEMPLATE",
                     help="Output file name without its extension, from {stem} (the input's) and {scale}; "
                          "e.g. --name {stem} keeps the input's name (batch: in OUT_DIR)."),
        click.option("--quality", type=click.IntRange(1, 100), default=None,
                     help="JPEG/WebP/AVIF quality (default 95/95/90)."),
        click.option("--alpha-mode", type=click.Choice(["model", "bicubic"]), default="model", show_default=True,
                     help="Upscale transparency with the model (as a gray image) or with bicubic."),
        click.option("--max-pixels", type=int, default=None,
                     help="Raise (or lower) the decompression-bomb limit on input pixels."),
    )(fn)


def frames_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--frames first|all (run, batch)."""
    return click.option("--frames", type=click.Choice(["first", "all"]), default="first", show_default=True,
                        help="Of an animated GIF, WebP or PNG: the first frame only (said in one line), or every "
                             "frame, written as an animated PNG (APNG) or WebP with the same timing.")(fn)


def quiet_option(help_text: str) -> Decorator:
    """-q/--quiet: no progress and no info lines (``upscale -q CMD`` sets it too)."""
    def lower_logging(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        if value:
            logging.getLogger("upscale").setLevel(logging.WARNING)
        return value
    return click.option("-q", "--quiet", is_flag=True, help=help_text, callback=lower_logging)


def engine_options_from(device: str = "auto", precision: str = "auto", tile_px: str | int | None = None,
                        overlap_px: int | None = None, batch: int | None = None, threads: int | None = None,
                        compile_mode: str = "auto", backend: str | None = None) -> Any:
    """``EngineOptions`` from the flags' values (None: the engine's default); validated here, before
    any model is loaded. ``backend`` None: the --backend of the running command, if it has one."""
    from ..engine import EngineOptions

    if backend is None:
        ctx = click.get_current_context(silent=True)
        backend = ctx.meta.get(BACKEND_META, "auto") if ctx is not None else "auto"
    kwargs: dict[str, Any] = {"device": device, "precision": precision, "threads": threads, "compile": compile_mode,
                              "backend": backend}
    if tile_px is not None:
        kwargs["tile_px"] = tile_px if tile_px == "auto" else _whole_number("--tile", tile_px)
    if overlap_px is not None:
        kwargs["overlap_px"] = overlap_px
    if batch is not None:
        kwargs["batch"] = batch
    return EngineOptions(**kwargs)


def model_name_from(model_name: str | None, weights: Path | None, outscale: float | None) -> str:
    """What -m / --weights / -s name: a file, a registry name, or the default model for the scale."""
    from ..api import default_model_name

    if weights is not None and model_name is not None:
        raise click.UsageError("give either -m or --weights, not both")
    if weights is not None:
        return str(weights)
    return model_name if model_name is not None else default_model_name(outscale)


def load_model_from(name: str, outscale: float | None, interp_alpha: float | None, options: Any = None) -> Any:
    """The ``Model`` for ``name`` (see ``model_name_from``), saying when its output will be resized.
    ``options`` (the run's ``EngineOptions``): where they let the winograd backend run (device and
    backend auto or cpu/winograd, precision auto or fp32) and its kernels are not built on this machine
    yet, the build starts in the background once the weights are found (a refusal, an offline Hub,
    leaves no trace) where the registry's architecture is one winograd computes (a file's is not
    read yet: it may be), and runs while torch and the model load."""
    from ..api import load_model

    def weights_found(arch: str | None) -> None:
        from ..backends import WINOGRAD_ARCHS, winograd_native

        if arch is None or arch in WINOGRAD_ARCHS:
            winograd_native.build_soon()

    wants = options is not None and options.device in ("auto", "cpu") and options.compile != "on" \
        and options.backend in ("auto", "winograd") and options.precision in ("auto", "fp32")
    model = load_model(name, alpha=interp_alpha, weights_found=weights_found if wants else None)
    if outscale is not None and outscale != model.scale:
        log.info("model %s is x%d; resizing its output to x%g with Lanczos", model.name or model.source,
                 model.scale, outscale)
    return model


def _whole_number(flag: str, value: str | int) -> int:
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an integer or 'auto'", param_hint=flag) from None
