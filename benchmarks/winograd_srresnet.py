"""The SRResNet family on the winograd backend against our torch fp32 path, side by side: SRGAN's
generator (``srresnet``, 64 features, 16 blocks, BatchNorm, x4) and BasicSR's MSRResNet (``msrresnet``,
64 features, 16 blocks, x4) at their published sizes, weights random (BatchNorm statistics and PReLU
slopes drawn too: speed and agreement do not depend on training), one window of the whole crop.

    cd benchmarks && python winograd_srresnet.py --photo ../../shared/data/Set14/man.png --sides 128 256 --runs 3

Per network and side: seconds of ``Engine.upscale`` on a crop of the photo (best of ``--runs`` after
a warm-up, the two backends alternated), the ratio, and the PSNR (RGB, 8-bit) of winograd's output
against torch's. lscpu's model and flags are recorded with the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import progress, publish, seconds


def _network(arch: str):
    import torch

    from upscale.archs import build_module
    from upscale.loading import model_from_state_dict

    torch.manual_seed(0)
    net = build_module(arch, {})
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(0.0, 0.3)
    return model_from_state_dict(net.state_dict(), arch, {}, source=f"{arch} (random weights)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photo", type=Path, required=True)
    p.add_argument("--sides", type=int, nargs="+", default=[128, 256])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--archs", nargs="+", default=["srresnet", "msrresnet"])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import torch

    from upscale.engine import Engine, EngineOptions
    from upscale.io import read_image
    from upscale.machine import cpu_info
    from upscale.metrics import psnr

    torch.set_num_threads(args.threads)
    photo = read_image(args.photo).pixels
    rows = []
    for arch in args.archs:
        model = _network(arch)
        for side in args.sides:
            crop = photo[:side, :side, :3].copy()
            engines = {b: Engine(model, EngineOptions(backend=b, precision="fp32", compile="off", tile_px=side,
                                                      threads=args.threads)) for b in ("torch", "winograd")}
            outs = {b: e.upscale(crop) for b, e in engines.items()}     # warm-up, and the outputs compared
            times: dict[str, list[float]] = {b: [] for b in engines}
            for _ in range(args.runs):
                for b, e in engines.items():
                    times[b].append(seconds(lambda: e.upscale(crop)))
            row = {"network": arch, "side": side, "torch_s": min(times["torch"]), "winograd_s": min(times["winograd"]),
                   "speed_up": min(times["torch"]) / min(times["winograd"]),
                   "psnr_vs_torch_db": psnr(outs["winograd"], outs["torch"], y_channel=False)}
            progress(row)
            rows.append(row)
    publish("winograd_srresnet.py", argv, args.json, rows=rows,
            env_extra={"threads": args.threads, "precision": "fp32", "device": "cpu",
                       "cpu_flags": " ".join(sorted(cpu_info().flags))})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
