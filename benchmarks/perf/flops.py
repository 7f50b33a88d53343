"""How much arithmetic: multiply-adds of a network's convolutions for one input shape, and the
bf16 peaks of this CPU (theoretical from stated assumptions, and torch.mm as measured now), with the
ceiling the engine is judged against: the GEMM of the precision it runs in on this CPU."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from _common import EMULATED_BF16_N, best_of, load_avg
from upscale.device import cpu_native_bf16
from upscale.machine import cpu_info

# Peak arithmetic assumptions (FLOP per cycle per core; one multiply-add = 2 FLOP).
AMX_BF16_FLOP_PER_CYCLE = 2 * 1024   # AMX TMUL: 1024 bf16 multiply-adds per cycle per core
# AVX-512 BF16 without AMX: VDPBF16PS on a 512-bit register is 32 bf16 multiply-adds; assumed two
# issued per cycle per core (two 512-bit FMA pipes, as on AMD Zen 5 and Intel server cores).
AVX512_BF16_FLOP_PER_CYCLE = 2 * 2 * 32


def _clock_hz() -> float:
    try:
        return float(cpu_info().mhz) * 1e6
    except ValueError:   # no clock in /proc/cpuinfo
        return float("nan")


def peak_flops(threads: int, runs_in: str | None = None) -> dict[str, Any]:
    """Theoretical bf16 peaks from the stated assumptions and the clock in /proc/cpuinfo, plus the
    bf16 and fp32 GEMM throughput measured now (2048^3 torch.mm, best of 5), as a practical ceiling.

    ``ceiling_dtype`` / ``ceiling_gemm_gflops``: the ceiling our engine's figures are judged against,
    the GEMM of the precision it runs in here, ``runs_in`` ("bf16" or "fp32"; None: bf16 where the
    CPU has native bf16, AMX or avx512_bf16, else fp32). Without native bf16, bf16 is emulated,
    hundreds of times slower, and measured only at ``EMULATED_BF16_N``^3 for the record."""
    flags = cpu_info().flags
    hz = _clock_hz()
    native = cpu_native_bf16()
    out: dict[str, Any] = {"clock_ghz": hz / 1e9, "cores_used": threads}
    out["amx_bf16_peak_gflops"] = AMX_BF16_FLOP_PER_CYCLE * hz * threads / 1e9
    out["amx_present"] = "amx_bf16" in flags
    out["avx512_bf16_peak_gflops"] = (AVX512_BF16_FLOP_PER_CYCLE * hz * threads / 1e9
                                      if "avx512_bf16" in flags else None)
    for name, dtype, n in (("bf16", torch.bfloat16, 2048 if native else EMULATED_BF16_N),
                           ("fp32", torch.float32, 2048)):
        a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
        out[f"measured_{name}_gemm_gflops"] = 2 * n**3 / best_of(lambda: torch.mm(a, b), runs=5) / 1e9
        out[f"measured_{name}_gemm_n"] = n
    out["ceiling_dtype"] = runs_in or ("bf16" if native else "fp32")
    out["ceiling_gemm_gflops"] = out[f"measured_{out['ceiling_dtype']}_gemm_gflops"]
    out["loadavg"] = load_avg()
    return out


def conv_macs(module: nn.Module, in_ch: int, height: int, width: int) -> int:
    """Multiply-accumulates of every Conv2d in ``module`` for one (1, in_ch, height, width) input,
    counted with forward hooks on a copy of the module on the meta device (shapes only, no compute)."""
    meta = copy.deepcopy(module).to("meta")
    total = 0

    def hook(conv: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        _, cin_per_group, kh, kw = conv.weight.shape
        total += out.numel() * cin_per_group * kh * kw

    for m in meta.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        meta(torch.empty(1, in_ch, height, width, device="meta"))
    return total


def rates(flop: float, seconds: float, peak: dict[str, Any]) -> dict[str, float]:
    """GFLOP/s of ``flop`` done in ``seconds``, and as fractions of the peaks of ``peak_flops``."""
    gflops = flop / seconds / 1e9
    out = {"gflops": gflops, "fraction_of_amx_bf16_peak": gflops / peak["amx_bf16_peak_gflops"],
           "fraction_of_measured_bf16_gemm": gflops / peak["measured_bf16_gemm_gflops"],
           "fraction_of_ceiling": gflops / peak["ceiling_gemm_gflops"]}
    if peak["avx512_bf16_peak_gflops"]:
        out["fraction_of_avx512_bf16_peak"] = gflops / peak["avx512_bf16_peak_gflops"]
    return out
