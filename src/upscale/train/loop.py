"""The training loop: data -> g_step (/ d_step) -> EMA -> log, validate, checkpoint; resumable exactly.

Exactness: everything random in an iteration comes from the batch sampler, a pure function of
(seed, iteration) (see ``data``); the learning rate is a pure function of the iteration; the rest of
the state (weights, EMA, optimiser moments, GradScaler, every RNG) is in the checkpoint. So a run
resumed from iteration k continues bit for bit as if it had never stopped (same device, precision
and thread count).

Distributed: under ``torchrun`` (WORLD_SIZE > 1) the networks are wrapped in DDP (gloo on CPU, nccl
on CUDA); each rank takes its slice of the global batch; rank 0 alone logs, validates and saves.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from .. import archs
from ..model import Model
from ..errors import CheckpointError, TrainingError, UsageError
from . import checkpoint as ckpt
from .config import TrainConfig
from .curves import draw_curves
from .data import IterationBatches, PairSet, batch_loader, list_images, load_hr_folders, load_paired, make_lr, \
    mod_crop, read_rgb8
from .discriminators import build_discriminator
from .losses import PerceptualLoss
from .steps import Amp, GeneratorLoss, d_step, g_step
from .vgg import build_vgg

log = logging.getLogger(__name__)
Echo = Callable[[str], None]
# Options that fix the networks' shapes: a checkpoint cannot be resumed under other values.
_SHAPE_KEYS = ("arch", "hparams", "scale", "discriminator", "gt_size")


@dataclass
class TrainResult:
    out: Path
    iteration: int
    model_path: Path
    best_path: Path | None
    best_psnr: float | None
    bicubic: dict[str, tuple[float, float]] = field(default_factory=dict)
    last_val: dict[str, tuple[float, float]] = field(default_factory=dict)
    interrupted: bool = False


# --- runtime -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp: Amp
    fp16_scaler: bool
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _bf16_supported_on_cpu() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_runtime(cfg: TrainConfig) -> Runtime:
    """Device, autocast dtype and process group, from the config and torchrun's environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    want = cfg.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        from ..errors import DeviceError
        raise DeviceError("--device cuda, but no CUDA GPU is available")
    if want not in ("cpu", "cuda"):
        from ..errors import DeviceError
        raise DeviceError(f"training runs on cpu or cuda, not {want!r}")
    device = torch.device(want, int(os.environ.get("LOCAL_RANK", "0"))) if want == "cuda" else torch.device("cpu")
    precision = cfg.precision
    if precision == "auto":
        precision = "fp16" if want == "cuda" else ("bf16" if _bf16_supported_on_cpu() else "fp32")
    if precision == "fp16" and want == "cpu":
        from ..errors import PrecisionError
        raise PrecisionError("fp16 training needs CUDA; on the CPU use bf16 or fp32")
    if precision == "bf16" and want == "cpu" and not _bf16_supported_on_cpu():
        from ..errors import PrecisionError
        raise PrecisionError("this CPU has no bf16 support; use --precision fp32")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if world_size > 1:
        if cfg.batch_size % world_size:
            raise UsageError(f"batch size {cfg.batch_size} is not divisible by the {world_size} processes")
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if want == "cuda" else "gloo")
        if want == "cuda":
            torch.cuda.set_device(device)
    return Runtime(device, Amp(want, dtype), dtype == torch.float16, rank, world_size)


# --- networks ------------------------------------------------------------------------------------
def build_generator(cfg: TrainConfig) -> tuple[nn.Module, str, dict[str, Any]]:
    """(module, arch, hparams): from ``cfg.init`` (registry name or weights file) or built fresh."""
    if cfg.init:
        model = _load_init(cfg.init)
        if model.scale != cfg.scale:
            raise UsageError(f"--init {cfg.init} is a x{model.scale} model, but training is x{cfg.scale}")
        return model.module.float().train(), model.arch, dict(model.hparams)
    family = archs.get_family(cfg.arch) if cfg.arch in archs.BY_NAME else None
    if family is None:
        raise UsageError(f"unknown architecture {cfg.arch!r}; known: {', '.join(archs.BY_NAME)}")
    unknown = set(cfg.hparams) - set(family.defaults)
    if unknown:
        raise UsageError(f"{cfg.arch} has no hyperparameter {sorted(unknown)[0]!r}; "
                         f"it takes {', '.join(family.defaults)}")
    hparams = {**family.defaults, **cfg.hparams, "scale": cfg.scale}
    try:
        module = family.build(**hparams)
    except (ValueError, TypeError) as err:
        raise UsageError(f"cannot build {cfg.arch} with {hparams}: {err}") from None
    return module.train(), cfg.arch, hparams


def _load_init(init: str) -> Model:
    """A weights file, or a registry name resolved through the hub (downloaded once, verified)."""
    from .. import loading

    if Path(init).is_file():
        return loading.load_model(init)
    from .. import hub, registry

    spec = registry.get_model(init)
    return loading.load_model(hub.weights_path(spec), name=spec.name)


def select_trainable(module: nn.Module, trainable: list[str], freeze: list[str]) -> list[nn.Parameter]:
    """Set requires_grad by name patterns (fnmatch): in ``trainable`` (all when empty) and not in
    ``freeze``. UsageError when nothing would train."""
    params = []
    for name, p in module.named_parameters():
        keep = (not trainable or any(fnmatch.fnmatchcase(name, pat) for pat in trainable)) \
            and not any(fnmatch.fnmatchcase(name, pat) for pat in freeze)
        p.requires_grad_(keep)
        if keep:
            params.append(p)
    if not params:
        raise UsageError(f"no parameter matches the trainable patterns {trainable} (minus {freeze})")
    return params


class EMA:
    """Exponential moving average of a module's parameters (buffers are copied as they are).

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so the average forgets the
    random initial weights within a few hundred iterations instead of ~5000 at 0.999: early
    validations then judge the trained weights, not a blend with the initialisation."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, num_updates: int) -> None:
        decay = min(self.decay, (1.0 + num_updates) / (10.0 + num_updates))
        src = dict(module.named_parameters())
        ema_params = [p for _, p in self.module.named_parameters()]
        live = [src[n].detach() for n, _ in self.module.named_parameters()]
        torch._foreach_lerp_(ema_params, live, 1.0 - decay)
        for (_, b_ema), (_, b) in zip(self.module.named_buffers(), module.named_buffers()):
            b_ema.copy_(b)


def lr_factor(cfg: TrainConfig, iteration: int) -> float:
    """Multiplier of the base learning rate for 1-based ``iteration`` (a pure function: no state)."""
    done = iteration - 1
    if cfg.scheduler == "constant":
        return 1.0
    if cfg.scheduler == "multistep":
        return cfg.gamma ** sum(1 for m in cfg.milestones if done >= m)
    floor = min(cfg.min_learning_rate / cfg.learning_rate, 1.0)
    progress = min(done, cfg.max_iters) / cfg.max_iters
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --- validation ----------------------------------------------------------------------------------
@dataclass
class ValImage:
    name: str
    lr: np.ndarray
    hr: np.ndarray


def load_val_sets(folders: list[str], scale: int) -> dict[str, list[ValImage]]:
    """{set name: images}: each HR mod-cropped, its LR made by MATLAB bicubic (the bench convention)."""
    sets: dict[str, list[ValImage]] = {}
    for folder in folders:
        images = []
        for path in list_images(folder):
            hr = mod_crop(read_rgb8(path), scale)
            images.append(ValImage(path.stem, make_lr(hr, scale), hr))
        sets[Path(folder).name] = images
    return sets


def _bicubic_up(lr: np.ndarray, scale: int) -> np.ndarray:
    from ..resize import imresize, round_like_matlab

    return round_like_matlab(imresize(lr.astype(np.float64), float(scale), round_between_passes=True)).astype(np.uint8)


def bicubic_scores(sets: dict[str, list[ValImage]], scale: int) -> dict[str, tuple[float, float]]:
    from ..metrics import psnr, ssim

    out = {}
    for name, images in sets.items():
        ups = [(_bicubic_up(im.lr, scale), im.hr) for im in images]
        out[name] = (float(np.mean([psnr(u, h, crop_border=scale) for u, h in ups])),
                     float(np.mean([ssim(u, h, crop_border=scale) for u, h in ups])))
    return out


@torch.no_grad()
def super_resolve(module: nn.Module, lr: np.ndarray, device: torch.device) -> np.ndarray:
    """Whole-image fp32 inference of an (H, W, 3) uint8 image -> uint8, rounded like the engine."""
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].to(device).float().div_(255.0)
    y = module(x).float().clamp_(0.0, 1.0).mul_(255.0).round_()
    return y[0].permute(1, 2, 0).to("cpu", torch.uint8).numpy()


def evaluate(module: nn.Module, sets: dict[str, list[ValImage]], scale: int, device: torch.device
             ) -> tuple[dict[str, tuple[float, float]], np.ndarray | None]:
    """{set: (mean PSNR-Y, mean SSIM-Y)} with crop_border = scale, and the first SR image."""
    from ..metrics import psnr, ssim

    was_training = module.training
    module.eval()
    scores, first = {}, None
    try:
        for name, images in sets.items():
            p, s = [], []
            for im in images:
                sr = super_resolve(module, im.lr, device)
                first = sr if first is None else first
                p.append(psnr(sr, im.hr, crop_border=scale))
                s.append(ssim(sr, im.hr, crop_border=scale))
            scores[name] = (float(np.mean(p)), float(np.mean(s)))
    finally:
        module.train(was_training)
    return scores, first


def _save_sample(pixels: np.ndarray, path: Path) -> None:
    from ..io import Image, write_image

    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(Image(pixels=pixels, alpha=None, icc_profile=None, exif=None, source_format="PNG",
                      source_mode="RGB"), path)


# --- signals -------------------------------------------------------------------------------------
class StopFlag:
    """Set by SIGINT/SIGTERM; the loop stops at the next iteration boundary and saves. A second
    Ctrl-C raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name


@contextmanager
def _signals(flag: StopFlag) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --- the loop ------------------------------------------------------------------------------------
class Trainer:
    """Holds one run's live state; ``run()`` trains to ``cfg.max_iters``."""

    def __init__(self, cfg: TrainConfig, *, echo: Echo | None = None, progress: bool = True,
                 resume: str | Path | None = None) -> None:
        self.cfg = cfg
        self.echo = echo or log.info
        self.progress = progress
        self.out = Path(cfg.out)
        self.rt = resolve_runtime(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        import random
        random.seed(cfg.seed)

        state = ckpt.load_checkpoint(resume) if resume is not None else None
        if state is not None and cfg.init:
            # The checkpoint holds the weights; the --init file is not needed (nor read) again.
            gen, self.arch, self.hparams = archs.build_module(state["arch"], state["hparams"]).train(), \
                state["arch"], dict(state["hparams"])
        else:
            gen, self.arch, self.hparams = build_generator(cfg)
        self.gen = gen.to(self.rt.device)
        params = select_trainable(self.gen, cfg.trainable, cfg.freeze)
        self.opt_g = torch.optim.Adam(params, lr=cfg.learning_rate, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.gen, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.disc: nn.Module | None = None
        self.opt_d: torch.optim.Optimizer | None = None
        if cfg.discriminator:
            self.disc = build_discriminator(cfg.discriminator, cfg.gt_size).to(self.rt.device).train()
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.d_learning_rate or cfg.learning_rate,
                                          betas=cfg.betas, weight_decay=cfg.weight_decay)
        perceptual = None
        if cfg.perceptual_weight > 0:
            perceptual = PerceptualLoss(build_vgg(cfg.perceptual_layer, cfg.vgg_weights),
                                        cfg.perceptual_criterion).to(self.rt.device)
        self.spec = GeneratorLoss(cfg.pixel_loss, cfg.pixel_weight, perceptual, cfg.perceptual_weight,
                                  cfg.gan_type, cfg.gan_weight)
        self.scaler_g = torch.amp.GradScaler("cuda") if self.rt.fp16_scaler else None
        self.scaler_d = torch.amp.GradScaler("cuda") if self.rt.fp16_scaler and self.disc is not None else None

        self.iteration = 0
        self.best_psnr: float | None = None
        self.elapsed_s = 0.0
        if state is not None:
            self._restore(state, Path(str(resume)))

        memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.memory_format = memory
        self.gen.to(memory_format=memory)
        if self.disc is not None:
            self.disc.to(memory_format=memory)
        self.gen_run: nn.Module = self.gen
        self.disc_run: nn.Module | None = self.disc
        if self.rt.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            self.gen_run = DDP(self.gen, device_ids=ids)
            if self.disc is not None:
                self.disc_run = DDP(self.disc, device_ids=ids)
        if cfg.compile:
            self.gen_run = torch.compile(self.gen_run)
            if self.disc_run is not None:
                self.disc_run = torch.compile(self.disc_run)

    # -- checkpoint state --
    def state(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "iteration": self.iteration, "config": json.loads(self.cfg.to_json()), "arch": self.arch,
            "hparams": self.hparams, "generator": self.gen.state_dict(), "opt_g": self.opt_g.state_dict(),
            "best_psnr": self.best_psnr, "elapsed_s": self.elapsed_s, "rng": ckpt.capture_rng(),
        }
        if self.ema is not None:
            s["ema"] = self.ema.module.state_dict()
        if self.disc is not None and self.opt_d is not None:
            s["disc"] = self.disc.state_dict()
            s["opt_d"] = self.opt_d.state_dict()
        if self.scaler_g is not None:
            s["scaler_g"] = self.scaler_g.state_dict()
        if self.scaler_d is not None:
            s["scaler_d"] = self.scaler_d.state_dict()
        return s

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        saved = state.get("config", {})
        for key in _SHAPE_KEYS:
            if key == "gt_size" and not self.cfg.discriminator:
                continue  # only a discriminator's dense layer depends on the crop size
            mine = getattr(self.cfg, key)
            theirs = saved.get(key)
            if key == "hparams":
                mine, theirs = self.hparams, state.get("hparams")
            if mine != theirs:
                raise CheckpointError(f"was saved with {key}={theirs!r}, this run has {key}={mine!r}", path=path)
        try:
            self.gen.load_state_dict(state["generator"], strict=True)
            self.opt_g.load_state_dict(state["opt_g"])
            if self.ema is not None:
                if "ema" not in state:
                    raise CheckpointError("has no EMA weights but this run uses ema_decay > 0", path=path)
                self.ema.module.load_state_dict(state["ema"], strict=True)
            if self.disc is not None and self.opt_d is not None:
                self.disc.load_state_dict(state["disc"], strict=True)
                self.opt_d.load_state_dict(state["opt_d"])
            if self.scaler_g is not None and "scaler_g" in state:
                self.scaler_g.load_state_dict(state["scaler_g"])
            if self.scaler_d is not None and "scaler_d" in state:
                self.scaler_d.load_state_dict(state["scaler_d"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"does not fit this run: {str(err).splitlines()[0]}", path=path) from None
        ckpt.restore_rng(state["rng"])
        self.iteration = int(state["iteration"])
        self.best_psnr = state.get("best_psnr")
        self.elapsed_s = float(state.get("elapsed_s", 0.0))

    def save(self, *, best: bool = False) -> Path:
        state = self.state()
        path = ckpt.checkpoint_path(self.out, self.iteration)
        if best:
            ckpt.save_checkpoint(ckpt.checkpoint_dir(self.out) / "best.pt", state)
            self.export(self.out / "best.safetensors")
            return path
        ckpt.save_checkpoint(path, state)
        ckpt.prune_checkpoints(self.out, self.cfg.keep_last)
        self.export(self.out / "model.safetensors")
        return path

    def export(self, path: Path) -> None:
        """The generator's EMA weights (live weights without EMA) as safetensors usable by ``upscale -m``."""
        from ..loading import model_state_dict, save_model

        module = self.ema.module if self.ema is not None else self.gen
        save_model(path, model_state_dict(module), self.arch, self.hparams,
                   {"upscale.train.preset": self.cfg.preset, "upscale.train.iteration": str(self.iteration)})

    # -- one iteration --
    def _to_input(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.rt.device, non_blocking=True).float().div_(255.0)
        return x.contiguous(memory_format=self.memory_format)

    def step(self, lr_u8: torch.Tensor, hr_u8: torch.Tensor) -> dict[str, torch.Tensor]:
        factor = lr_factor(self.cfg, self.iteration + 1)
        for group in self.opt_g.param_groups:
            group["lr"] = self.cfg.learning_rate * factor
        lr, hr = self._to_input(lr_u8), self._to_input(hr_u8)
        sr, terms = g_step(self.gen_run, self.disc, lr, hr, self.opt_g, self.spec, self.rt.amp, self.scaler_g)
        if self.disc_run is not None and self.opt_d is not None:
            for group in self.opt_d.param_groups:
                group["lr"] = (self.cfg.d_learning_rate or self.cfg.learning_rate) * factor
            terms.update(d_step(self.disc_run, sr, hr, self.opt_d, self.cfg.gan_type, self.rt.amp, self.scaler_d))
        if self.ema is not None:
            self.ema.update(self.gen, self.iteration)
        self.iteration += 1
        return terms

    # -- the run --
    def run(self) -> TrainResult:
        cfg, rt = self.cfg, self.rt
        echo = self.echo if rt.is_main else (lambda msg: None)
        if rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write(self.out / "config.json", lambda tmp: tmp.write_text(cfg.to_json() + "\n"))
            self._truncate_metrics()
        t0 = time.perf_counter()
        if cfg.lr_dir and cfg.hr_dir:
            pairs: PairSet = load_paired(cfg.lr_dir, cfg.hr_dir, cfg.scale, min_hr_px=cfg.gt_size)
        else:
            pairs = load_hr_folders(cfg.data, cfg.scale, min_hr_px=cfg.gt_size, degradation=cfg.degradation,
                                    blur_sigma=cfg.blur_sigma)
        echo(f"data: {len(pairs)} images decoded and degraded in {time.perf_counter() - t0:.1f} s")
        val_sets = load_val_sets(cfg.val, cfg.scale) if cfg.val and rt.is_main else {}
        bicubic = bicubic_scores(val_sets, cfg.scale) if val_sets else {}
        for name, (p, s) in bicubic.items():
            echo(f"bicubic baseline {name}: PSNR-Y {p:.2f} dB, SSIM-Y {s:.4f}")
        if bicubic and self.iteration == 0:
            rec: dict[str, Any] = {"iter": 0}
            for name, (p, s) in bicubic.items():
                rec[f"bicubic/{name}/psnr"], rec[f"bicubic/{name}/ssim"] = p, s
            self._append_metrics(rec)
        n_params = sum(p.numel() for p in self.gen.parameters())
        echo(f"generator {self.arch} {self.hparams}: {n_params / 1e6:.3f} M parameters; device {rt.device}, "
             f"precision {rt.amp.dtype or 'fp32'}, {rt.world_size} process(es)")
        if self.iteration:
            echo(f"resumed at iteration {self.iteration}")
        elif cfg.preset == "esrgan" and not cfg.init:
            echo("warning: esrgan from random weights; the recipe starts from a PSNR-trained model (--init)")

        batches = IterationBatches(pairs, seed=cfg.seed, batch_size=cfg.batch_size, gt_size=cfg.gt_size,
                                   rank=rt.rank, world_size=rt.world_size)
        loader = batch_loader(batches, self.iteration, cfg.max_iters, cfg.workers)
        flag = StopFlag()
        last_val: dict[str, tuple[float, float]] = {}
        window: dict[str, float] = {}
        window_n, window_t = 0, time.perf_counter()
        saved_at = self.iteration
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_iters, initial=self.iteration, unit="it", dynamic_ncols=True,
                   disable=not (self.progress and rt.is_main), leave=True)
        session_start = time.perf_counter()
        elapsed_before = self.elapsed_s
        try:
            with _signals(flag):
                for lr_u8, hr_u8 in loader:
                    terms = self.step(lr_u8, hr_u8)
                    values = {k: float(v) for k, v in terms.items()}
                    stop = self._agree_stop(flag.reason is not None, values)
                    bad = [k for k, v in values.items() if not math.isfinite(v)]
                    if bad:
                        last = ckpt.latest_checkpoint(self.out)
                        raise TrainingError(f"loss {bad[0]} became {values[bad[0]]} at iteration {self.iteration}; "
                                            f"stopped (last good checkpoint: {last or 'none yet'})", path=self.out)
                    self.elapsed_s = elapsed_before + time.perf_counter() - session_start
                    for k, v in values.items():
                        window[k] = window.get(k, 0.0) + v
                    window_n += 1
                    bar.update(1)
                    if self.iteration % 10 == 0 or self.iteration == cfg.max_iters:
                        bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("g_total", "d_total")})
                    if rt.is_main and (self.iteration % cfg.log_every == 0 or self.iteration == cfg.max_iters):
                        now = time.perf_counter()
                        rec = {"iter": self.iteration, "time_s": round(self.elapsed_s, 3),
                                               "lr": self.opt_g.param_groups[0]["lr"],
                                               "it_per_s": round(window_n / max(now - window_t, 1e-9), 4)}
                        rec.update({f"loss/{k}": v / window_n for k, v in window.items()})
                        self._append_metrics(rec)
                        window, window_n, window_t = {}, 0, now
                    if val_sets and (self.iteration % cfg.val_every == 0 or self.iteration == cfg.max_iters):
                        last_val = self._validate(val_sets, echo, bar)
                    if self.iteration % cfg.ckpt_every == 0 or self.iteration == cfg.max_iters:
                        if rt.is_main:
                            self.save()
                        saved_at = self.iteration
                    if stop:
                        break
        finally:
            bar.close()
        interrupted = self.iteration < cfg.max_iters
        if interrupted and rt.is_main and saved_at != self.iteration:
            self.save()
        if interrupted:
            echo(f"stopped ({flag.reason or 'interrupted'}) at iteration {self.iteration}; checkpoint saved, "
                 f"continue with --resume")
        if rt.is_main and (self.out / "metrics.jsonl").is_file():
            draw_curves(self.out / "metrics.jsonl", self.out / "curves.png")
        if rt.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
        best = self.out / "best.safetensors"
        return TrainResult(self.out, self.iteration, self.out / "model.safetensors",
                           best if best.is_file() else None, self.best_psnr, bicubic, last_val, interrupted)

    def _agree_stop(self, stop: bool, values: dict[str, float]) -> bool:
        """In DDP every rank must stop at the same iteration; a NaN anywhere stops everyone."""
        if self.rt.world_size == 1:
            return stop
        import torch.distributed as dist

        nan = any(not math.isfinite(v) for v in values.values())
        t = torch.tensor([float(stop), float(nan)], device=self.rt.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if t[1] > 0 and not nan:
            values["g_total"] = float("nan")
        return bool(t[0] > 0)

    def _validate(self, val_sets: dict[str, list[ValImage]], echo: Echo, bar: Any) -> dict[str, tuple[float, float]]:
        module = self.ema.module if self.ema is not None else self.gen
        scores, first = evaluate(module, val_sets, self.cfg.scale, self.rt.device)
        rec: dict[str, Any] = {"iter": self.iteration, "time_s": round(self.elapsed_s, 3)}
        for name, (p, s) in scores.items():
            rec[f"val/{name}/psnr"], rec[f"val/{name}/ssim"] = p, s
        self._append_metrics(rec)
        mean_psnr = float(np.mean([p for p, _ in scores.values()]))
        text = ", ".join(f"{n} {p:.2f} dB / {s:.4f}" for n, (p, s) in scores.items())
        echo(f"iter {self.iteration}: validation (EMA) PSNR-Y/SSIM-Y {text}")
        if first is not None:
            _save_sample(first, self.out / "samples" / f"iter_{self.iteration:08d}.png")
        if self.best_psnr is None or mean_psnr > self.best_psnr:
            self.best_psnr = mean_psnr
            self.save(best=True)
        draw_curves(self.out / "metrics.jsonl", self.out / "curves.png")
        return scores

    def _append_metrics(self, rec: dict[str, Any]) -> None:
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def _truncate_metrics(self) -> None:
        """Drop records past the resumed iteration (a killed run may have logged beyond its checkpoint)."""
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return
        keep = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("iter", 0) <= self.iteration]
        ckpt.atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep)))


def train(cfg: TrainConfig, *, echo: Echo | None = None, progress: bool = True,
          resume: str | Path | None = None) -> TrainResult:
    """Train (or resume) a run described by ``cfg``; see ``Trainer``."""
    trainer = Trainer(cfg, echo=echo, progress=progress, resume=resume)
    try:
        return trainer.run()
    finally:
        if trainer.rt.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def resolve_resume(out: str | Path, resume: str) -> Path:
    """``--resume`` value -> checkpoint path: 'latest' is the newest in ``{out}/checkpoints``."""
    if resume != "latest":
        return Path(resume)
    path = ckpt.latest_checkpoint(out)
    if path is None:
        raise CheckpointError("no checkpoint to resume from", path=ckpt.checkpoint_dir(out))
    return path
