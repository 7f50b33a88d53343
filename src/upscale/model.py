"""The model descriptor: one record that says everything the engine needs to know about a network.

Contract of ``Model.module``: input (B, in_channels, H, W) float in [0, 1] with H and W multiples of
``size_multiple``; output (B, out_channels, H*scale, W*scale), *not* clamped (the engine clamps).
The module is in eval mode, float32, on the CPU when it leaves ``upscale.loading``; the engine moves
and casts it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .archs import build_module, get_family


@dataclass(frozen=True)
class Model:
    module: nn.Module
    arch: str
    hparams: dict[str, Any]
    source: str = ""                 # file path or registry name, for messages
    name: str = ""                   # registry name when it came from the registry
    bf16_safe: bool = True           # measured >= 50 dB vs fp32 (registry flag); engine falls back to fp32 if False
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def scale(self) -> int:
        return int(self.hparams["scale"])

    @property
    def in_channels(self) -> int:
        return int(self.hparams.get("num_in_ch", 3))

    @property
    def out_channels(self) -> int:
        return int(self.hparams.get("num_out_ch", 3))

    @property
    def size_multiple(self) -> int:
        return get_family(self.arch).size_multiple(self.hparams)

    @property
    def receptive_radius(self) -> int:
        return get_family(self.arch).receptive_radius(self.hparams)

    def inference_form(self) -> "Model":
        """This model as inference should run it: a network trained in a re-parameterised form (SPAN's
        Conv3XC branches) as its family's ``deploy`` form, the same function with each kernel computed
        once instead of at every forward pass; any other model as it is."""
        deploy = get_family(self.arch).deploy
        if deploy is None:
            return self
        sd, hparams = deploy(self.module.state_dict(), dict(self.hparams))
        if hparams == dict(self.hparams):
            return self
        module = build_module(self.arch, hparams)
        module.load_state_dict(sd, strict=True)
        return replace(self, module=module.float().eval(), hparams=hparams)


def model_digest(model: Model, extra: dict[str, Any]) -> str:
    """SHA-256 of a network (architecture, hyper-parameters, and every tensor's name, dtype, shape and
    bytes in name order) and of ``extra`` (what else a cached result depends on): the key of what is
    computed from it (OpenVINO's converted graph, batch's journal)."""
    digest = hashlib.sha256()
    head = {"arch": model.arch, "hparams": model.hparams, **extra}
    digest.update(json.dumps(head, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(f"{str(tensor.dtype).removeprefix('torch.')}{tuple(tensor.shape)}".encode())
        if tensor.numel():      # flat first: a 0-d buffer (BatchNorm's step count) has no byte view
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
