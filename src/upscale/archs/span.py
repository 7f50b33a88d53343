"""SPAN (Wan et al., "Swift Parameter-free Attention Network for Efficient Super-Resolution", NTIRE
2024): six blocks of three re-parameterisable 3x3 convs, each block gated by its own output
(``sigmoid(y) - 0.5``, no attention weights), a 1x1 fusion of four feature maps, pixel shuffle.

Every 3x3 conv is trained as ``Conv3XC``: a 1x1 skip plus a 1x1 -> 3x3 -> 1x1 chain with twice the
channels in the middle. The chain is linear, so it collapses to one 3x3 conv; we always run the
collapsed kernel (computed from the branch weights on each call, differentiably), so training costs
about what the plain network costs and inference needs no separate "deploy" step.

Canonical keys are the authors' layout (as the SPAN repository and traiNNer-redux save it, and as
OpenModelDB's SPAN models ship): ``conv_1.sk.weight``, ``conv_1.conv.{0,1,2}.weight``,
``block_{1..6}.c{1,2,3}_r.*``, ``conv_cat.weight``, ``conv_2.*``, ``upsampler.0.weight``, and a
``no_norm`` buffer when the input is not mean-shifted. Their files also carry ``*.eval_conv.*``, the
collapsed kernels of the last time the model ran in eval mode: ``canonicalize`` drops them (they are
recomputed from the branches, which are the truth). A file with ``eval_conv`` kernels only is the
deploy form (``deploy = True``): what we ship, a quarter of the parameters (``collapse``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from . import catalog

NAME = "span"
TITLE = "SPAN"
DEFAULTS = catalog.DEFAULTS[NAME]
# Files with our metadata written before ``silu_first`` existed were trained with the raw map (see SPAN).
METADATA_DEFAULTS = {"silu_first": False}
NUM_BLOCKS = 6
GAIN = 2
# The authors' input normalisation: (x - mean) * 255 (DIV2K's RGB mean); the output is not shifted back.
RGB_MEAN = (0.4488, 0.4371, 0.4040)
IMG_RANGE = 255.0


class Conv3XC(nn.Module):
    """A 3x3 conv trained as skip(1x1) + 1x1 -> 3x3 -> 1x1, run as the single 3x3 conv it equals.
    ``deploy``: only that conv (``eval_conv``), as shipped."""

    def __init__(self, c_in: int, c_out: int, gain: int = GAIN, deploy: bool = False) -> None:
        super().__init__()
        if deploy:
            self.eval_conv = nn.Conv2d(c_in, c_out, 3, 1, 1)
            return
        self.sk = nn.Conv2d(c_in, c_out, 1)
        self.conv = nn.Sequential(nn.Conv2d(c_in, c_in * gain, 1), nn.Conv2d(c_in * gain, c_out * gain, 3),
                                  nn.Conv2d(c_out * gain, c_out, 1))

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the one 3x3 conv (padding 1) this block computes."""
        (w1, b1), (w2, b2), (w3, b3) = ((c.weight, c.bias) for c in self.conv)
        w1, w3 = w1.flatten(1), w3.flatten(1)                      # (mid, in), (out, mid2)
        weight = torch.einsum("om,mnhw,ni->oihw", w3, w2, w1)
        bias = w3 @ (w2.sum((2, 3)) @ b1 + b2) + b3
        weight = weight + F.pad(self.sk.weight, (1, 1, 1, 1))
        return weight, bias + self.sk.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "eval_conv"):
            return self.eval_conv(x)
        weight, bias = self.fused()
        return F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype), padding=1)


class SPAB(nn.Module):
    """Three Conv3XC (SiLU between), gated by the last one's own output."""

    def __init__(self, num_feat: int, deploy: bool) -> None:
        super().__init__()
        self.c1_r = Conv3XC(num_feat, num_feat, deploy=deploy)
        self.c2_r = Conv3XC(num_feat, num_feat, deploy=deploy)
        self.c3_r = Conv3XC(num_feat, num_feat, deploy=deploy)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out1 = self.c1_r(x)
        out3 = self.c3_r(F.silu(self.c2_r(F.silu(out1))))
        gate = torch.sigmoid(out3) - 0.5
        return (out3 + x) * gate, out1


class SPAN(nn.Module):
    """``silu_first``: the last block's first map enters ``conv_cat`` after SiLU. That is what the
    authors' code computes, though not what it appears to say: its block returns ``out1`` after an
    in-place ``SiLU(inplace=True)`` has overwritten it, so every SPAN trained with it (OpenModelDB's,
    traiNNer-redux's, spandrel's reading of them) has the activated map there. Our first SPAN models
    (default-x4, default-x2, default-x4-gan) were trained with the raw map (``silu_first=False``,
    recorded in their metadata; the shipped ones were later fine-tuned into the SiLU form); files in the
    authors' layout, and new training runs, use SiLU."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 48, scale: int = 4,
                 norm: bool = True, deploy: bool = False, silu_first: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.norm = norm
        self.silu_first = silu_first
        self.gray = num_in_ch != 3        # normalised by the mean of the three (fixed here, not read off
                                          # the input, so OpenVINO's tracer sees no shape-dependent branch)
        if not norm:
            # the authors mark an un-normalised model with this (unused) buffer; kept for their layout
            self.register_buffer("no_norm", torch.zeros(1))
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_1 = Conv3XC(num_in_ch, num_feat, deploy=deploy)
        for i in range(1, NUM_BLOCKS + 1):
            setattr(self, f"block_{i}", SPAB(num_feat, deploy))
        self.conv_cat = nn.Conv2d(num_feat * 4, num_feat, 1)
        self.conv_2 = Conv3XC(num_feat, num_feat, deploy=deploy)
        self.upsampler = nn.Sequential(nn.Conv2d(num_feat, num_out_ch * scale * scale, 3, 1, 1),
                                       nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm:
            mean = self.mean.mean() if self.gray else self.mean
            x = (x - mean.to(x.dtype)) * IMG_RANGE
        feat = self.conv_1(x)
        out, first = self.block_1(feat)
        out_b1 = out
        for i in range(2, NUM_BLOCKS + 1):
            out, first = getattr(self, f"block_{i}")(out)
        # the last block's first conv (its out1) is one of the four maps fused by conv_cat
        if self.silu_first:
            first = F.silu(first)
        out = self.conv_cat(torch.cat([feat, self.conv_2(out), out_b1, first], 1))
        return self.upsampler(out)


def build(num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 48, scale: int = 4, norm: bool = True,
          deploy: bool = False, silu_first: bool = True) -> SPAN:
    return SPAN(num_in_ch, num_out_ch, num_feat, scale, _flag("norm", norm), _flag("deploy", deploy),
                _flag("silu_first", silu_first))


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _flag(name: str, value: Any) -> bool:
    """A boolean hyperparameter as a bool. JSON metadata keeps bools, but a hand-edited file or
    ``--hparam norm=False`` (not JSON, so kept as text) gives the string "False", which is truthy: it
    would silently build the other network. Anything that is not clearly true or false is a ValueError
    (``loading`` words it as a mismatch, ``train`` as a usage error)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, not {value!r}")


@torch.no_grad()
def collapse(sd: Mapping[str, torch.Tensor], hparams: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A training-form state dict -> the deploy form (each Conv3XC as its one ``eval_conv``): the same
    function, a quarter of the parameters. Returns (state dict, hparams); a deploy form comes back as
    it is (a network fine-tuned from our shipped files is already in that form)."""
    if _flag("deploy", hparams.get("deploy", False)):
        return dict(sd), dict(hparams)
    out = _collapsed_kernels(sd, hparams)
    for key, value in sd.items():
        if key.startswith(("conv_cat.", "upsampler.")) or key == "no_norm":
            out[key] = value.clone()
    return out, {**hparams, "deploy": True}


@torch.no_grad()
def to_authors_layout(sd: Mapping[str, torch.Tensor], hparams: dict) -> dict[str, torch.Tensor]:
    """A training-form state dict -> the authors' full layout: the branches plus every ``eval_conv``
    (the collapsed kernels). Only this layout is recognised by spandrel (chaiNNer) and traiNNer-redux,
    whose detection asks for both ``sk`` and ``eval_conv`` keys; neither our training form nor the deploy
    form is."""
    return {**{k: v.clone() for k, v in sd.items()}, **_collapsed_kernels(sd, hparams)}


@torch.no_grad()
def expand(sd: Mapping[str, torch.Tensor], hparams: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A deploy-form state dict -> a training form computing the same function (the inverse of
    ``collapse`` up to the choice of branches): each ``eval_conv`` kernel W, b becomes the chain
    1x1 [I; 0] -> 3x3 [[W, 0], [0, 0]] -> 1x1 [I, 0] + b with a zero skip, which collapses back to
    exactly W, b (biases before the 3x3 are zero, so the authors' zero-padded borders agree too). A
    training form comes back as it is. Returns (state dict, hparams)."""
    if not _flag("deploy", hparams.get("deploy", False)):
        return dict(sd), dict(hparams)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        match = _EVAL_CONV.fullmatch(key)
        if match is None:
            out[key] = value.clone()
        elif key.endswith(".weight"):
            prefix = key[: -len("eval_conv.weight")]
            weight, bias = value, sd[prefix + "eval_conv.bias"]
            c_out, c_in = int(weight.shape[0]), int(weight.shape[1])
            w1 = torch.zeros(c_in * GAIN, c_in, 1, 1, dtype=weight.dtype)
            w1[:c_in, :, 0, 0] = torch.eye(c_in, dtype=weight.dtype)
            w2 = torch.zeros(c_out * GAIN, c_in * GAIN, 3, 3, dtype=weight.dtype)
            w2[:c_out, :c_in] = weight
            w3 = torch.zeros(c_out, c_out * GAIN, 1, 1, dtype=weight.dtype)
            w3[:, :c_out, 0, 0] = torch.eye(c_out, dtype=weight.dtype)
            out.update({
                prefix + "sk.weight": torch.zeros(c_out, c_in, 1, 1, dtype=weight.dtype),
                prefix + "sk.bias": torch.zeros(c_out, dtype=weight.dtype),
                prefix + "conv.0.weight": w1, prefix + "conv.0.bias": torch.zeros(c_in * GAIN, dtype=weight.dtype),
                prefix + "conv.1.weight": w2, prefix + "conv.1.bias": torch.zeros(c_out * GAIN, dtype=weight.dtype),
                prefix + "conv.2.weight": w3, prefix + "conv.2.bias": bias.clone(),
            })
    return out, {**hparams, "deploy": False}


def authors_layout(sd: Mapping[str, torch.Tensor], hparams: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Any form (training or deploy) -> the authors' full layout (``to_authors_layout``), hparams of
    the training form. Spandrel/chaiNNer and traiNNer-redux recognise SPAN only in this layout. A
    network with ``silu_first`` off is a ValueError: the authors' code would compute another function."""
    if not _flag("silu_first", hparams.get("silu_first", True)):
        raise ValueError("it feeds the raw first map of its last block to conv_cat (silu_first false); the "
                         "authors' SPAN applies SiLU there, so their code would compute something else")
    sd, hparams = expand(sd, hparams)
    return to_authors_layout(sd, hparams), hparams


def _collapsed_kernels(sd: Mapping[str, torch.Tensor], hparams: dict) -> dict[str, torch.Tensor]:
    """``<conv>.eval_conv.{weight,bias}`` of every Conv3XC of a training-form state dict."""
    net = build(**{**DEFAULTS, **hparams, "deploy": False})
    net.load_state_dict(sd, strict=True)
    out: dict[str, torch.Tensor] = {}
    for name, mod in net.named_modules():
        if isinstance(mod, Conv3XC):
            w, b = mod.fused()
            out[f"{name}.eval_conv.weight"], out[f"{name}.eval_conv.bias"] = w.contiguous(), b.contiguous()
    return out


def size_multiple(hp: dict) -> int:
    return 1


def receptive_radius(hp: dict) -> int:
    # conv_1, 6 x 3 block convs, conv_2 and the upsampler's conv: 21 stacked 3x3 convs
    return 2 + 3 * NUM_BLOCKS + 1


def detect(sd: dict[str, torch.Tensor]) -> dict | None:
    """Hyperparameters from the authors' keys, or None: the training form (branches, ``eval_conv``
    already dropped) or the deploy form (``eval_conv`` only)."""
    deploy = "conv_1.eval_conv.weight" in sd
    first = "conv_1.eval_conv.weight" if deploy else "conv_1.sk.weight"
    needed = (first, "conv_cat.weight", "upsampler.0.weight",
              "block_1.c1_r.eval_conv.weight" if deploy else "block_1.c1_r.sk.weight")
    if any(k not in sd for k in needed) or (deploy and any(".sk." in k for k in sd)):
        return None
    num_feat, num_in_ch = (int(v) for v in sd[first].shape[:2])
    if not deploy and int(sd["conv_1.conv.1.weight"].shape[0]) != num_feat * GAIN:
        return None
    out_ch_sq = int(sd["upsampler.0.weight"].shape[0])
    for num_out_ch in (num_in_ch, 3, 1):
        s = int(round((out_ch_sq / num_out_ch) ** 0.5))
        if out_ch_sq % num_out_ch == 0 and s * s * num_out_ch == out_ch_sq:
            break
    else:
        return None
    return {"num_in_ch": num_in_ch, "num_out_ch": num_out_ch, "num_feat": num_feat, "scale": s,
            "norm": "no_norm" not in sd, "deploy": deploy}


_EVAL_CONV = re.compile(r".*\.eval_conv\.(weight|bias)")


def canonicalize(sd: Mapping[str, Any]) -> dict[str, Any] | None:
    """The authors' full layout (branches + ``eval_conv``) without the recomputable ``eval_conv``
    kernels; None for anything else."""
    if "conv_1.sk.weight" not in sd or "block_1.c1_r.eval_conv.weight" not in sd:
        return None
    if "conv_1.conv.1.weight" not in sd:
        return None  # the deploy form (collapsed kernels only) is canonical as it is
    return {k: v for k, v in sd.items() if not _EVAL_CONV.fullmatch(k)}


def explain(sd: Mapping[str, Any]) -> str:
    """Why keys that look like SPAN were not recognised ("" when they do not look like it)."""
    if not any(k.startswith("block_1.c1_r.") for k in sd):
        return ""
    branches, collapsed = any(".sk." in k for k in sd), any(".eval_conv." in k for k in sd)
    if collapsed and branches and "conv_1.conv.1.weight" not in sd:
        return ("it looks like SPAN, but some of its convs have only the collapsed kernel (eval_conv) and others "
                "the training branches (sk, conv): a file holds one form or the other, or both for every conv")
    first = "conv_1.sk.weight" if branches else "conv_1.eval_conv.weight"
    missing = [k for k in (first, "conv_cat.weight", "upsampler.0.weight") if k not in sd]
    if missing:
        return f"it looks like SPAN, but it has no {', '.join(missing)}"
    mid = sd.get("conv_1.conv.1.weight")
    if branches and mid is not None and int(mid.shape[0]) != GAIN * int(sd[first].shape[0]):
        return (f"it looks like SPAN, but its conv_1 widens {int(sd[first].shape[0])} features to "
                f"{int(mid.shape[0])} in the middle, not {GAIN}x as SPAN's Conv3XC does")
    return "it looks like SPAN, but some of its keys are missing or have unexpected shapes"
