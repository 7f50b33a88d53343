"""How accurate would a bf16 Winograd path be (the lever an AMX CPU would want: its tile GEMMs take bf16)?
Simulated on any CPU: every 3x3 convolution of a network replaced by Winograd F(m x m, 3x3) computed in
float64 with the transformed operands rounded to bf16 as AMX would read them (products summed exactly,
as AMX sums them in fp32), the whole network's 8-bit output compared with the float64 direct network.

    cd benchmarks && python winograd_bf16_accuracy.py --model /tmp/x4plus.safetensors \\
        --image ../../shared/data/Set5/baby.png --crop 48 --json OUT.json

Variants: ``direct bf16`` (inputs and weights rounded: what oneDNN's AMX convolutions compute);
``F(4) bf16`` (V = Bᵀ d B and U = G g Gᵀ rounded); ``F(4) bf16x2 U`` (U as a hi + lo pair of bf16, V
rounded: two products, as a GEMM over twice the channels); ``F(4) bf16x2 V`` (the other way round);
``F(4) bf16x3`` (both split, three products: hi·hi + hi·lo + lo·hi); ``F(2) bf16``. The rule the project
keeps for bf16 is >= 50 dB against fp32 on every Set5/Set14 image. Slow (float64 einsums): a 48x48
crop of x4plus takes ~40 s for all variants on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

from _common import progress, publish

# F(4x4, 3x3) (Lavin & Gray) and F(2x2, 3x3): input transform Bᵀ, weight transform G, output transform Aᵀ
MATRICES = {
    4: (((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
         (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
        ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
         (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
        ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))),
    2: (((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
        ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
        ((1, 1, 1, 0), (0, 1, -1, -1))),
}
VARIANTS = {"F(4) bf16": (4, "bf16"), "F(4) bf16x2 U": (4, "x2u"), "F(4) bf16x2 V": (4, "x2v"),
            "F(4) bf16x3": (4, "x3"), "F(2) bf16": (2, "bf16")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a weights file or registry name with 3x3 convolutions")
    ap.add_argument("--image", type=Path, action="append", required=True)
    ap.add_argument("--crop", type=int, default=48, help="centre crop side (input px)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = [row for image in args.image for row in measure(args.model, image, args.crop)]
    publish("winograd_bf16_accuracy.py", argv, args.json, rows=rows)


def measure(model_name: str, image: Path, crop: int) -> list[dict]:
    import numpy as np
    import torch
    from PIL import Image

    from upscale.api import load_model

    net = load_model(model_name).module.eval()
    with Image.open(image) as im:
        im = im.convert("RGB")
        w, h = im.size
        im = im.crop((w // 2 - crop // 2, h // 2 - crop // 2, w // 2 - crop // 2 + crop, h // 2 - crop // 2 + crop))
        x = torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].double() / 255
    rows = []
    with torch.no_grad():
        reference = copy.deepcopy(net).double()(x)
        cases = {"fp32 direct": lambda conv: None, "direct bf16": DirectBf16}
        cases.update({name: (lambda m, mode: lambda conv: WinogradConv(conv, m, mode))(*spec)
                      for name, spec in VARIANTS.items()})
        for name, make in cases.items():
            dtype = torch.float32 if name == "fp32 direct" else torch.float64
            variant = copy.deepcopy(net).to(dtype)
            if name != "fp32 direct":
                swap(variant, make)
            out = variant(x.to(dtype)).double()
            rows.append({"image": f"{image.name} {crop}x{crop} centre", "variant": name,
                         "psnr_vs_float64_db": round(psnr8(out, reference), 2)})
            progress(rows[-1])
    return rows


def rounded(t):
    """t rounded to bf16 (round to nearest even), back in t's dtype."""
    import torch

    return t.float().to(torch.bfloat16).to(t.dtype)


def split(t):
    """t as hi + lo, both bf16 values."""
    hi = rounded(t)
    return hi, rounded(t - hi)


class DirectBf16:
    """A direct 3x3 convolution of bf16-rounded inputs and weights, summed exactly."""

    def __init__(self, conv):
        self.conv = conv

    def __call__(self, x):
        import torch.nn.functional as F

        return F.conv2d(rounded(x), rounded(self.conv.weight), self.conv.bias, padding=1)


class WinogradConv:
    """F(m x m, 3x3) with the transformed operands rounded (``mode``), in float64."""

    def __init__(self, conv, m: int, mode: str):
        import torch

        bt, g, at = (torch.tensor(a, dtype=torch.float64) for a in MATRICES[m])
        self.m, self.mode, self.bt, self.at, self.bias = m, mode, bt, at, conv.bias
        self.u = torch.einsum("pa,ocab,qb->ocpq", g, conv.weight.double(), g)

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        m, n, _, h, w = self.m, *x.shape
        th, tw = -(-h // m), -(-w // m)
        d = F.pad(x, (1, tw * m + 1 - w, 1, th * m + 1 - h)).unfold(2, m + 2, m).unfold(3, m + 2, m)
        v = torch.einsum("pa,nctwab,qb->nctwpq", self.bt, d, self.bt)
        gemm = lambda a, b: torch.einsum("nctwpq,ocpq->notwpq", a, b)   # noqa: E731
        if self.mode == "bf16":
            prod = gemm(rounded(v), rounded(self.u))
        elif self.mode == "x2u":
            hi, lo = split(self.u)
            prod = gemm(rounded(v), hi) + gemm(rounded(v), lo)
        elif self.mode == "x2v":
            hi, lo = split(v)
            prod = gemm(hi, rounded(self.u)) + gemm(lo, rounded(self.u))
        else:
            (vh, vl), (uh, ul) = split(v), split(self.u)
            prod = gemm(vh, uh) + gemm(vh, ul) + gemm(vl, uh)
        y = torch.einsum("ip,notwpq,jq->notiwj", self.at, prod, self.at).reshape(n, -1, th * m, tw * m)
        return y[:, :, :h, :w] + self.bias.view(1, -1, 1, 1)


def swap(module, make) -> None:
    """Every 3x3 convolution of ``module`` replaced by ``make(conv)`` (a callable module stand-in)."""
    from torch import nn

    class Wrapped(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(x)

    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3):
            setattr(module, name, Wrapped(make(child)))
        else:
            swap(child, make)


def psnr8(a, b) -> float:
    """PSNR of the two outputs as 8-bit images."""
    a, b = (a.clamp(0, 1) * 255).round(), (b.clamp(0, 1) * 255).round()
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


if __name__ == "__main__":
    main()
