"""Training: ``upscale train`` presets (psnr, srgan, esrgan, tiny-gan, finetune, gan-finetune), resumable and
multi-process. Entry point: ``upscale.train.loop.train(build_config(preset, ...))``.

``train`` and ``TrainResult`` are imported on first use (PEP 562): the CLI reads ``config`` (presets,
defaults) when it registers its commands, and that must not import the training loop and torch."""

from typing import Any

from .config import PRESETS, TrainConfig, build_config

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "build_config", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
