"""Validation during training: HR folders -> (LR, HR) pairs made the bench's way (``dataprep``),
the bicubic baseline, PSNR-Y/SSIM-Y of a network with crop_border = scale, and sample images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..dataprep import bicubic_down, bicubic_up, check_eval_size, list_images, mod_crop, read_uint8
from ..errors import DataError, ImageReadError
from ..metrics import psnr, ssim


@dataclass
class ValImage:
    name: str
    lr: np.ndarray
    hr: np.ndarray


def load_val_sets(folders: list[str], scale: int) -> dict[str, list[ValImage]]:
    """{set name: images}, read as ``upscale bench`` reads them: each HR mod-cropped, its LR made by
    MATLAB bicubic, a gray image kept one plane (scored as its own luma). A set is named by its
    folder, or by the whole path where two folders share a name; an image too small to score, an
    unreadable one or a folder given twice is a ``DataError`` naming it."""
    sets: dict[str, list[ValImage]] = {}
    names = [Path(folder).name for folder in folders]
    for folder, name in zip(folders, names):
        if names.count(name) > 1:
            name = str(folder)
        if name in sets:
            raise DataError("validation folder given twice", path=folder)
        images = []
        for path in list_images(folder):
            try:
                hr = mod_crop(read_uint8(path, rgb=False), scale)
            except ImageReadError as err:
                raise DataError(f"cannot read validation image: {err.message}", path=path) from None
            check_eval_size(hr, scale, path)
            images.append(ValImage(path.stem, bicubic_down(hr, scale), hr))
        sets[name] = images
    return sets


def bicubic_scores(sets: dict[str, list[ValImage]], scale: int) -> dict[str, tuple[float, float]]:
    out = {}
    for name, images in sets.items():
        ups = [(bicubic_up(im.lr, scale), im.hr) for im in images]
        out[name] = (float(np.mean([psnr(u, h, crop_border=scale) for u, h in ups])),
                     float(np.mean([ssim(u, h, crop_border=scale) for u, h in ups])))
    return out


@torch.no_grad()
def super_resolve(module: nn.Module, lr: np.ndarray, device: torch.device) -> np.ndarray:
    """Whole-image fp32 inference of an (H, W, C) uint8 image -> uint8, rounded like the engine; a
    gray image (C = 1) goes in repeated to RGB and comes out as the rounded mean of the rounded
    channels, as ``api.Upscaler`` (and so the bench) makes it."""
    gray = lr.shape[2] == 1
    x = torch.from_numpy(np.repeat(lr, 3, axis=2) if gray else lr).permute(2, 0, 1)[None]
    y = module(x.to(device).float().div_(255.0)).float().clamp_(0.0, 1.0).mul_(255.0).round_()
    if gray:
        y = y.mean(dim=1, keepdim=True).round_()
    return y[0].permute(1, 2, 0).to("cpu", torch.uint8).numpy()


def evaluate(module: nn.Module, sets: dict[str, list[ValImage]], scale: int, device: torch.device
             ) -> tuple[dict[str, tuple[float, float]], np.ndarray | None]:
    """{set: (mean PSNR-Y, mean SSIM-Y)} with crop_border = scale, and the first SR image."""
    was_training = module.training
    module.eval()
    scores, first = {}, None
    try:
        for name, images in sets.items():
            p, s = [], []
            for im in images:
                sr = super_resolve(module, im.lr, device)
                first = sr if first is None else first
                p.append(psnr(sr, im.hr, crop_border=scale))
                s.append(ssim(sr, im.hr, crop_border=scale))
            scores[name] = (float(np.mean(p)), float(np.mean(s)))
    finally:
        module.train(was_training)
    return scores, first


def save_sample(pixels: np.ndarray, path: Path) -> None:
    from ..io import Image, write_image

    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(Image(pixels=pixels, alpha=None, icc_profile=None, exif=None, source_format="PNG",
                      source_mode="RGB"), path)
