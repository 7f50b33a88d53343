"""RRDBNet: the ESRGAN / Real-ESRGAN generator (residual-in-residual dense blocks).

Canonical keys are BasicSR's (``conv_first``, ``body.N.rdb1.conv1``, ``conv_body``, ``conv_up1`` ...).
Scales 1 and 2 pixel-unshuffle the input first (Real-ESRGAN x2plus), so H and W must be multiples of
4 (scale 1) or 2 (scale 2).

Under autocast (bf16 on the CPU, fp16 on CUDA) the convolutions run in the low precision except
where precision is cheap and matters (docs/perf.md, real realesrgan-x4plus weights, bf16 vs fp32):

- the residual trunk (``feat`` and every block's ``x + 0.2 * f(x)``) stays in the input's dtype, fp32:
  adding 69 residuals in bf16 rounds the trunk to 8 bits of mantissa at every block (Set14 baboon
  crop: 50.0 -> 51.2 dB, ~2% more time);
- ``conv_first``, which reads the image (3 input channels, ~0.01% of the MACs), runs in fp32: bf16
  cannot even hold the input's 8-bit levels (steps of 1/512 above 0.5), and that first rounding is
  what the deep trunk amplified most (whole Set14 bridge: 49.1 -> 51.8 dB, no measurable cost).
  ``conv_last`` in fp32 as well gave 52.4 dB there but cost ~5% (its fp32 input is a 64-channel map at
  the output resolution), so it stays in the low precision.

Without autocast nothing changes: the same operations, in the same order, on the same dtype.

OpenVINO's CPU plugin ignores autocast: under a bf16 inference precision it rounds every node's output
to bf16, so ``OPENVINO_FP32`` names the nodes of the converted graph (OpenVINO's PyTorch frontend names
them ``__module.<module path>/aten::<op>/...``; the top level's own ops have no module prefix) that the
backend keeps in fp32: the same trunk and ``conv_first`` as above, and ``conv_last`` too, which costs
nothing there (a 64 -> 3 conv runs no faster in bf16). Set14 256x256 crops, bf16 vs our fp32 (man,
baboon, bridge): all bf16 51.5 / 48.7 / 47.6 dB; first + trunk 54.4 / 51.6 / 51.8; with ``conv_last``
55.6 / 52.0 / 52.5 (docs/perf.md, "OpenVINO bf16 keeps RRDBNet's fp32 islands").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import catalog

NAME = "rrdbnet"
TITLE = "RRDBNet"
NCNN_MARKER = "Concat"   # only RRDBNet graphs concatenate (the dense blocks)
OPENVINO_FP32_PARTS = {   # (benchmarks/openvino_fp32_islands.py measures them one by one)
    "first": r"__module\.conv_first/",
    "last": r"__module\.conv_last/",
    "trunk": r"__module\.body\.\d+(\.rdb\d)?/aten::(add|mul)/(Add|Multiply)$|aten::add/Add$",  # residuals, feat + body
}
OPENVINO_FP32 = f"^({'|'.join(OPENVINO_FP32_PARTS.values())})"
DEFAULTS = catalog.DEFAULTS[NAME]


def _autocast_on(device: str) -> bool:
    """Whether autocast is on for this device type (devices without autocast, "meta" say: no)."""
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def _low(x: torch.Tensor) -> torch.Tensor:
    """``x`` in autocast's low-precision dtype when autocast is on for its device (converted once here
    rather than by every convolution and concatenation that reads it), else ``x`` itself."""
    device = x.device.type
    if x.dtype == torch.float32 and _autocast_on(device):
        return x.to(torch.get_autocast_dtype(device))
    return x


def _full(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` in fp32 even under autocast."""
    device = x.device.type
    if _autocast_on(device):
        with torch.autocast(device, enabled=False):
            return conv(x.float())
    return conv(x)


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each fed every earlier feature map; output scaled by 0.2 and added back."""

    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xl = _low(x)
        x1 = self.lrelu(self.conv1(xl))
        x2 = self.lrelu(self.conv2(torch.cat((xl, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((xl, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((xl, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((xl, x1, x2, x3, x4), 1))
        return x + 0.2 * x5          # in x's dtype: the trunk keeps fp32 under autocast


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 23,
                 num_grow_ch: int = 32, scale: int = 4) -> None:
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet supports scale 1, 2 or 4, not {scale}")
        self.scale = scale
        self.unshuffle = {1: 4, 2: 2, 4: 1}[scale]
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = _full(self.conv_first, x).to(x.dtype)    # the trunk in the input's dtype (see the docstring)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def build(num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 23,
          num_grow_ch: int = 32, scale: int = 4) -> RRDBNet:
    return RRDBNet(num_in_ch, num_out_ch, num_feat, num_block, num_grow_ch, scale)


def size_multiple(hp: dict) -> int:
    return {1: 4, 2: 2, 4: 1}[hp.get("scale", 4)]


def receptive_radius(hp: dict) -> int:
    """Input pixels of context a tile needs on each side for its centre to equal the untiled result."""
    m = size_multiple(hp)
    # conv_first + 15 convs per RRDB + conv_body at (input/m) resolution; the four HR-side convs add
    # under one input pixel each at x2/x4; pixel-unshuffle blocks add one block of alignment.
    lr_convs = 2 + 15 * hp.get("num_block", 23)
    return lr_convs * m + 2 + m


def _two_stages(sd: Mapping[str, torch.Tensor]) -> bool:
    """Two x2 upsampling stages (``conv_up1``, ``conv_up2``), as ours have; none beyond."""
    return "conv_up2.weight" in sd and "conv_up3.weight" not in sd


def detect(sd: dict[str, torch.Tensor]) -> dict | None:
    """Hyperparameters from a state dict in canonical (BasicSR) layout, or None if it is not RRDBNet."""
    if "conv_first.weight" not in sd or "body.0.rdb1.conv1.weight" not in sd \
            or not _two_stages(sd):    # x8 and up: more upsampling stages than ours (``explain`` says so)
        return None
    num_block = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    num_feat, in_ch = sd["conv_first.weight"].shape[:2]
    num_out_ch = sd["conv_last.weight"].shape[0]
    num_grow_ch = sd["body.0.rdb1.conv1.weight"].shape[0]
    unshuffle_sq = in_ch // num_out_ch if in_ch % num_out_ch == 0 else 1
    scale = {1: 4, 4: 2, 16: 1}.get(unshuffle_sq, 4)
    num_in_ch = in_ch // {4: 1, 2: 4, 1: 16}[scale]
    return {"num_in_ch": int(num_in_ch), "num_out_ch": int(num_out_ch), "num_feat": int(num_feat),
            "num_block": int(num_block), "num_grow_ch": int(num_grow_ch), "scale": int(scale)}


# --- legacy key layouts ---------------------------------------------------------------------------
# - old ESRGAN (``model.0``, ``model.1.sub.N.RDB1.conv1.0``, ``model.1.sub.{num_block}``, then the
#   upsampling convs, the HR conv and the last conv at increasing ``model.K`` indices);
# - the ESRGAN repository's ``RRDB_trunk`` / ``trunk_conv`` / ``upconvN`` / ``HRconv`` (also BSRGAN).
_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)")
_OLD_TRUNK = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)")
_OLD_TOP = re.compile(r"model\.(\d+)\.(weight|bias)")
_REPO_RDB = re.compile(r"RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.(weight|bias)")
_REPO_UP = re.compile(r"upconv(\d+)\.(weight|bias)")


def canonicalize(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The state dict renamed to canonical keys when it is in one of RRDBNet's legacy layouts, else None.
    Keys a layout does not explain are kept, so a strict load reports them."""
    keys = set(sd)
    if "model.0.weight" in keys and any(_OLD_RDB.fullmatch(k) for k in keys):
        return _rename(sd, _old_esrgan_renamer(sd))
    if any(k.startswith("RRDB_trunk.") for k in keys):
        return _rename(sd, _esrgan_repo_key)
    return None


def _rename(sd: Mapping[str, torch.Tensor], fn: Callable[[str], str]) -> dict[str, torch.Tensor]:
    return {fn(k): v for k, v in sd.items()}


def _old_esrgan_renamer(sd: Mapping[str, Any]) -> Callable[[str], str]:
    """Old ESRGAN: model.0 conv_first; model.1.sub.{i}.RDB* the trunk, model.1.sub.{num_block} conv_body;
    after that, in index order, one conv per x2 upsampling stage, then the HR conv, then the last conv."""
    tail = sorted({int(m.group(1)) for k in sd if (m := _OLD_TOP.fullmatch(k)) and int(m.group(1)) >= 2})
    tail_names: dict[int, str] = {}
    if len(tail) >= 2:
        tail_names = {i: f"conv_up{n + 1}" for n, i in enumerate(tail[:-2])}
        tail_names[tail[-2]] = "conv_hr"
        tail_names[tail[-1]] = "conv_last"
    top_names = {0: "conv_first", **tail_names}

    def rename(key: str) -> str:
        if m := _OLD_RDB.fullmatch(key):
            return f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"
        if m := _OLD_TRUNK.fullmatch(key):
            return f"conv_body.{m.group(2)}"
        if (m := _OLD_TOP.fullmatch(key)) and int(m.group(1)) in top_names:
            return f"{top_names[int(m.group(1))]}.{m.group(2)}"
        return key

    return rename


def _esrgan_repo_key(key: str) -> str:
    if m := _REPO_RDB.fullmatch(key):
        return f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"
    if m := _REPO_UP.fullmatch(key):
        return f"conv_up{m.group(1)}.{m.group(2)}"
    head, _, param = key.partition(".")
    return {"trunk_conv": f"conv_body.{param}", "HRconv": f"conv_hr.{param}"}.get(head, key)


def explain(sd: Mapping[str, torch.Tensor]) -> str:
    """Why canonical keys that look like RRDBNet were not recognised ("" when they do not look like it)."""
    if "body.0.rdb1.conv1.weight" in sd and not _two_stages(sd):
        stages = sum(1 for k in sd if re.fullmatch(r"conv_up\d+\.weight", k))
        return (f"it looks like ESRGAN (RRDBNet) with {stages} upsampling stage(s) (x{2 ** stages}), but only two "
                "are supported (x4, or x2/x1 with pixel-unshuffle)")
    return ""


# --- the ncnn graph -------------------------------------------------------------------------------
# ``g`` is ``upscale.ncnn``'s graph matcher: it takes layers by data flow and stores their weights
# under the canonical key it is given.
def match_ncnn(g: Any) -> dict[str, Any]:
    """conv_first -> N x RRDB -> conv_body (+ trunk) -> 2 x (nearest x2, conv, lrelu) -> conv_hr -> conv_last."""
    lrelu = ("leaky", 0.2)
    x, unshuffle = g.input_blob, 1
    if g.has_consumer(x, "Reorg"):
        reorg = g.take(x, ("Reorg",), "Reorg (pixel unshuffle)")
        factor = reorg.get(0, 0)
        if factor not in (2, 4) or reorg.get(1, 0) != 0:
            raise g.error("expected a pixel unshuffle by 2 or 4 in PyTorch channel order (mode 0)", reorg)
        unshuffle = int(factor)
        x = reorg.outputs[0]
    feat, in_ch, num_feat, act = g.conv(x, "conv_first")
    g.expect_act(act, ("none",), "conv_first", feat)
    if in_ch % (unshuffle * unshuffle):
        raise g.error(f"conv_first reads {in_ch} channels, not a multiple of the unshuffle {unshuffle}^2")
    trunk, num_block, num_grow_ch = feat, 0, None
    while g.has_consumer(trunk, "Concat"):
        block_in = trunk
        for r in (1, 2, 3):
            trunk, num_grow_ch = _match_rdb(g, trunk, f"body.{num_block}.rdb{r}", num_feat, num_grow_ch)
        trunk = g.weighted_sum(trunk, block_in, 0.2, f"RRDB residual (body.{num_block})")
        num_block += 1
    if num_block == 0:
        raise g.error("no residual-in-residual dense block after conv_first")
    body, _, _, act = g.conv(trunk, "conv_body", num_feat, num_feat)
    g.expect_act(act, ("none",), "conv_body", body)
    out = g.weighted_sum(body, feat, 1.0, "trunk sum (conv_first + conv_body)")
    for key in ("conv_up1", "conv_up2"):
        out = g.interp(out, "nearest", 2.0, f"nearest x2 upsampling before {key}")
        out, _, _, act = g.conv(out, key, num_feat, num_feat)
        g.expect_act(act, lrelu, key, out)
    out, _, _, act = g.conv(out, "conv_hr", num_feat, num_feat)
    g.expect_act(act, lrelu, "conv_hr", out)
    out, _, num_out_ch, act = g.conv(out, "conv_last", num_feat)
    g.expect_act(act, ("none",), "conv_last", out)
    if out != g.output_blob:
        raise g.error(f"conv_last writes {out!r}, but the graph's output is {g.output_blob!r}")
    return {"num_in_ch": in_ch // (unshuffle * unshuffle), "num_out_ch": num_out_ch, "num_feat": num_feat,
            "num_block": num_block, "num_grow_ch": num_grow_ch, "scale": {1: 4, 2: 2, 4: 1}[unshuffle]}


def _match_rdb(g: Any, x: str, key: str, num_feat: int, num_grow_ch: int | None) -> tuple[str, int]:
    """Five convs, each reading the concat of the block input and every earlier conv's output."""
    feats = [x]
    for k in range(1, 6):
        src = x
        if k > 1:
            wanted = tuple(feats)
            src = g.take(feats[-1], ("Concat",), f"Concat of {k} blobs ({key}.conv{k} input)",
                         lambda layer: g.ins(layer) == wanted and layer.get(0, 0) == 0).outputs[0]
        out_ch = num_feat if k == 5 else num_grow_ch
        in_ch = num_feat + (k - 1) * (num_grow_ch or 0)
        out, _, found_out, act = g.conv(src, f"{key}.conv{k}", in_ch, out_ch)
        num_grow_ch = num_grow_ch or found_out
        g.expect_act(act, ("none",) if k == 5 else ("leaky", 0.2), f"{key}.conv{k}", out)
        feats.append(out)
    return g.weighted_sum(feats[-1], x, 0.2, f"dense block residual ({key})"), num_grow_ch
