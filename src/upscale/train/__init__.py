"""Training: ``upscale train`` presets (psnr, srgan, esrgan, tiny-gan, finetune, gan-finetune), resumable and
multi-process. Entry point: ``upscale.train.loop.train(build_config(preset, ...))``."""

from .config import PRESETS, TrainConfig, build_config
from .loop import TrainResult, train

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "build_config", "train"]
