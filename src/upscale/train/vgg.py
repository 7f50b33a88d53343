"""VGG19 feature stack for perceptual losses, indexed like torchvision's ``vgg19().features``.

Layer names map to ``features.N`` indices: convB_L is the L-th conv of block B (0-based index in the
Sequential), reluB_L the activation right after it. ImageNet weights come from the Hub
(``timm/vgg19.tv_in1k``, whose ``features.N.weight/bias`` keys are torchvision's), from a local
safetensors/.pth file, or are random (``"random"``, for tests only).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError, WeightsError

# Channels per conv; "M" is a 2x2 max-pool. This is VGG19 ("E" in the paper).
_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                               512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
HUB_REPO = "timm/vgg19.tv_in1k"
HUB_FILE = "model.safetensors"
# Not pinned yet: the commit and sha256 could not be read offline when this was written. The strict
# key/shape check in ``load_imagenet`` still refuses any file that is not VGG19's feature stack.
HUB_REVISION = "main"
HUB_SHA256: str | None = None
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def layer_indices() -> dict[str, int]:
    """{'conv1_1': 0, 'relu1_1': 1, ..., 'conv5_4': 34, 'relu5_4': 35, 'pool5': 36}."""
    names: dict[str, int] = {}
    i, block, conv = 0, 1, 1
    for v in _CFG:
        if v == "M":
            names[f"pool{block}"] = i
            i, block, conv = i + 1, block + 1, 1
        else:
            names[f"conv{block}_{conv}"] = i
            names[f"relu{block}_{conv}"] = i + 1
            i, conv = i + 2, conv + 1
    return names


class VGG19Features(nn.Module):
    """``features[0..last]`` of VGG19 with ImageNet input normalisation; frozen, eval mode.

    ``forward(x)`` takes RGB in [0, 1] and returns the output of layer ``layer``."""

    def __init__(self, layer: str = "conv5_4") -> None:
        super().__init__()
        indices = layer_indices()
        if layer not in indices:
            raise UsageError(f"unknown VGG19 layer {layer!r}; e.g. conv5_4, relu5_4, relu2_2")
        modules: list[nn.Module] = []
        in_ch = 3
        for v in _CFG:
            if len(modules) > indices[layer]:
                break
            if v == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(in_ch, int(v), 3, 1, 1), nn.ReLU(inplace=False)]
                in_ch = int(v)
        self.layer = layer
        self.features = nn.Sequential(*modules[: indices[layer] + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)  # always eval: a loss network never updates statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)

    def load_imagenet(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        """Load ``features.N.*`` tensors (extra keys such as the classifier are ignored)."""
        own = self.features.state_dict()
        wanted = {k: state_dict.get(f"features.{k}") for k in own}
        missing = [k for k, v in wanted.items() if v is None]
        if missing:
            raise WeightsError(f"not VGG19 features weights (missing features.{missing[0]})", path=source)
        bad = [k for k, v in wanted.items() if tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise WeightsError(f"features.{bad[0]} has shape {tuple(wanted[bad[0]].shape)}, "
                               f"VGG19 needs {tuple(own[bad[0]].shape)}", path=source)
        self.features.load_state_dict({k: v.float() for k, v in wanted.items()}, strict=True)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError("VGG19 weights file not found", path=path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise WeightsError(f"cannot read safetensors: {err}", path=path) from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling refusal is a weights problem
        raise WeightsError(f"cannot load VGG19 weights safely: {err}", path=path) from None
    if not isinstance(sd, dict):
        raise WeightsError("VGG19 weights file does not hold a state dict", path=path)
    return sd


def build_vgg(layer: str, weights: str | None) -> VGG19Features:
    """VGG19 up to ``layer``. ``weights``: a file, ``"random"`` (tests), or None for the Hub copy."""
    net = VGG19Features(layer)
    if weights == "random":
        return net
    if weights is None:
        from ..hub import fetch_file

        path = Path(fetch_file(HUB_REPO, HUB_FILE, revision=HUB_REVISION, sha256=HUB_SHA256))
    else:
        path = Path(weights)
    net.load_imagenet(_read_state_dict(path), str(path))
    return net
