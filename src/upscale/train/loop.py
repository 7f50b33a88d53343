"""The training loop: data -> g_step (/ d_step) -> EMA -> log, validate, checkpoint; resumable exactly.

Exactness: everything random in an iteration comes from the batch sampler, a pure function of
(seed, iteration) (see ``data``); the learning rate is a pure function of the iteration; the rest of
the state (weights, EMA, optimiser moments, GradScaler, every RNG) is in the checkpoint. So a run
resumed from iteration k continues bit for bit as if it had never stopped (same device, precision
and thread count).

Distributed: under ``torchrun`` (WORLD_SIZE > 1) the networks are wrapped in DDP (gloo on CPU, nccl
on CUDA); each rank takes its slice of the global batch; rank 0 alone logs, validates and saves.

Files: nothing is written until the data has been read; a new run that fails before its first
checkpoint leaves nothing behind (``runfolder``).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .. import archs
from ..errors import TrainingError
from . import checkpoint as ckpt
from .config import TrainConfig
from .curves import draw_curves
from .data import IterationBatches, PairSet, batch_loader, load_hr_folders, load_paired
from .discriminators import build_discriminator
from .featurenets import build_feature_net, build_teacher
from .losses import DistillLoss, PerceptualLoss
from .networks import EMA, build_generator, lr_factor, select_trainable
from .progress import RunProgress, mode_of
from .resume import capture_state, resolve_resume, restore_state
from .runfolder import RunFolder
from .runtime import Runtime, resolve_runtime, settle_auto_precision
from .signals import StepAbandoned, StopFlag, abortable_step, stop_signals
from .steps import GeneratorLoss, d_step, g_step
from .validation import ValImage, bicubic_scores, evaluate, load_val_sets, save_sample

__all__ = ["EMA", "Runtime", "TrainResult", "Trainer", "build_generator", "lr_factor", "resolve_resume",
           "resolve_runtime", "select_trainable", "train"]

log = logging.getLogger(__name__)
Echo = Callable[[str], None]
Scores = dict[str, tuple[float, float]]


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


def _silent(msg: str) -> None:
    """The echo of DDP ranks other than 0."""


class _LossWindow:
    """Loss terms summed since the last metrics record (checkpointed, so a record after a resume
    averages the same iterations as without the stop), and the clock of this session's share."""

    def __init__(self) -> None:
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.start_clock(now)

    def start_clock(self, now: float) -> None:
        """Time iterations from ``now`` (it/s counts this session's iterations only; the sums stay)."""
        self.t, self.timed = now, 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1
        self.timed += 1

    def state(self) -> dict[str, Any]:
        return {"n": self.n, "sums": dict(self.sums)}

    def restore(self, state: dict[str, Any]) -> None:
        self.sums, self.n = {k: float(v) for k, v in state["sums"].items()}, int(state["n"])


def _seed_everything(cfg: TrainConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)


# --- the loop ------------------------------------------------------------------------------------
class Trainer:
    """Holds one run's live state; ``run()`` trains to ``cfg.max_iters``."""

    def __init__(self, cfg: TrainConfig, *, echo: Echo | None = None, progress: bool | str = True,
                 resume: str | Path | None = None, restart: bool = False) -> None:
        self.cfg = cfg
        self.echo = echo or log.info
        self.progress = mode_of(progress)     # "bar", "lines" (a log file) or "none" (train.progress)
        self.out = Path(cfg.out)
        self.folder = RunFolder(self.out)
        self.rt = resolve_runtime(cfg)
        _seed_everything(cfg)
        state = ckpt.load_checkpoint(resume) if resume is not None else None
        # a new run: not resumed, nor started over in the folder of a run stopped before its first checkpoint
        self._fresh = state is None and not restart
        self._build_networks(cfg, state)
        # checkpoints from before the choice was recorded were trained in the rule's answer (bf16 here)
        self._recorded_precision = None if state is None else state.get("precision", "bf16")
        self.precision_settled = False
        self.precision_note: str | None = None
        self.iteration = 0
        self.best_psnr: float | None = None
        self.elapsed_s = 0.0
        self.window = _LossWindow()
        if state is not None:
            restore_state(self, state, Path(str(resume)))
        self._prepare_runners(cfg)

    def _build_networks(self, cfg: TrainConfig, state: dict[str, Any] | None) -> None:
        """Generator (from the checkpoint's shapes, ``init`` or fresh), EMA, discriminator, losses."""
        if state is not None and cfg.init:
            # The checkpoint holds the weights; the init file is not needed (nor read) again.
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
        perceptual = distill = None
        if cfg.perceptual_weight > 0:
            perceptual = PerceptualLoss(build_feature_net(cfg.perceptual_net, cfg.perceptual_layer, cfg.vgg_weights),
                                        cfg.perceptual_criterion).to(self.rt.device)
        if cfg.distill_weight > 0 and cfg.distill_net:
            distill = DistillLoss(build_teacher(cfg.distill_net, cfg.scale)).to(self.rt.device)
        self.spec = GeneratorLoss(cfg.pixel_loss, cfg.pixel_weight, perceptual, cfg.perceptual_weight,
                                  cfg.gan_type, cfg.gan_weight, distill, cfg.distill_weight)
        self.scaler_g = torch.amp.GradScaler("cuda") if self.rt.fp16_scaler else None
        self.scaler_d = torch.amp.GradScaler("cuda") if self.rt.fp16_scaler and self.disc is not None else None

    def _prepare_runners(self, cfg: TrainConfig) -> None:
        """Memory format, DDP wrappers and torch.compile: what the step runs (``gen_run``/``disc_run``)."""
        memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.memory_format = memory
        self.gen.to(memory_format=memory)
        for judge in (self.disc, self.spec.perceptual, self.spec.distill):
            if judge is not None:
                judge.to(memory_format=memory)
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
        return capture_state(self)

    def save(self, *, best: bool = False) -> Path:
        state = self.state()
        path = ckpt.checkpoint_path(self.out, self.iteration)
        if best:
            ckpt.save_checkpoint(ckpt.checkpoint_dir(self.out) / "best.pt", state)
            self.export(self.out / "best.safetensors")
            self.folder.mark_saved()
            return path
        ckpt.save_checkpoint(path, state)
        ckpt.prune_checkpoints(self.out, self.cfg.keep_last)
        self.export(self.out / "model.safetensors")
        self.folder.mark_saved()
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

    def settle_precision(self, say: Echo | None = None) -> None:
        """Precision auto's measured choice (``runtime.settle_auto_precision``), once, before the first
        step: ``run`` makes it once the run folder is announced, so a stop during the probe still
        saves a checkpoint; ``say`` hears that a probe is starting."""
        if not self.precision_settled:
            self.rt, self.precision_note = settle_auto_precision(self.rt, self.cfg, self.gen, self.arch, self.hparams,
                                                                 self._recorded_precision, say=say)
            self.precision_settled = True

    def step(self, lr_u8: torch.Tensor, hr_u8: torch.Tensor) -> dict[str, torch.Tensor]:
        self.settle_precision()
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

    # -- the run, top to bottom --
    def run(self, on_start: Callable[[], None] | None = None) -> TrainResult:
        """Read the data (before anything is written), prepare the folder, train, finish.
        ``on_start`` is called once the folder exists and a stop signal would save a checkpoint
        (the CLI prints the run folder and its --resume line there)."""
        echo = self.echo if self.rt.is_main else _silent
        pairs, val_sets = self._load_data(echo)
        if self.rt.is_main:
            self.folder.prepare(self.cfg.to_json(), self.iteration, fresh=self._fresh)
        flag = StopFlag(say=echo)  # from here on a stop saves a checkpoint (at iteration 0 if it comes that early)
        try:
            with stop_signals(flag):
                if on_start is not None and self.rt.is_main:
                    on_start()
                bicubic = self._bicubic_baseline(val_sets, echo)
                try:  # the precision probe can take minutes on a busy CPU; a stop abandons it
                    with abortable_step(self._stoppable(flag), (), ()):
                        self.settle_precision(say=echo)
                except StepAbandoned:
                    pass
                self._announce(echo)
                last_val, reason = self._loop(pairs, val_sets, echo, flag)
                interrupted = self._finish(reason, echo)
        except BaseException:
            if self.rt.is_main:
                self.folder.discard_if_unsaved()
            raise
        finally:
            self.folder.release()    # another process may train in the folder now
        best = self.out / "best.safetensors"
        return TrainResult(self.out, self.iteration, self.out / "model.safetensors",
                           best if best.is_file() else None, self.best_psnr, bicubic, last_val, interrupted)

    def _load_data(self, echo: Echo) -> tuple[PairSet, dict[str, list[ValImage]]]:
        cfg = self.cfg
        t0 = time.perf_counter()
        if cfg.lr_dir and cfg.hr_dir:
            pairs = load_paired(cfg.lr_dir, cfg.hr_dir, cfg.scale, min_hr_px=cfg.gt_size)
        else:
            pairs = load_hr_folders(cfg.data, cfg.scale, min_hr_px=cfg.gt_size, degradation=cfg.degradation,
                                    blur_sigma=cfg.blur_sigma, scale_aug=cfg.scale_aug)
        echo(f"data: {len(pairs)} images decoded and degraded in {time.perf_counter() - t0:.1f} s")
        val_sets = load_val_sets(cfg.val, cfg.scale) if cfg.val and self.rt.is_main else {}
        return pairs, val_sets

    def _bicubic_baseline(self, val_sets: dict[str, list[ValImage]], echo: Echo) -> Scores:
        bicubic = bicubic_scores(val_sets, self.cfg.scale) if val_sets else {}
        for name, (p, s) in bicubic.items():
            echo(f"bicubic baseline {name}: PSNR-Y {p:.2f} dB, SSIM-Y {s:.4f}")
        if bicubic and self.iteration == 0:
            rec: dict[str, Any] = {"iter": 0}
            for name, (p, s) in bicubic.items():
                rec[f"bicubic/{name}/psnr"], rec[f"bicubic/{name}/ssim"] = p, s
            self.folder.append_metrics(rec)
        return bicubic

    def _announce(self, echo: Echo) -> None:
        rt = self.rt
        n_params = sum(p.numel() for p in self.gen.parameters())
        echo(f"generator {self.arch} {self.hparams}: {n_params / 1e6:.3f} M parameters; device {rt.device}, "
             f"precision {rt.amp.dtype or 'fp32'}, {rt.world_size} process(es)")
        if self.precision_note:
            echo(self.precision_note)
        if self.iteration:
            echo(f"resumed at iteration {self.iteration}")
        elif self.cfg.preset == "esrgan" and not self.cfg.init:
            echo("warning: esrgan from random weights; the recipe starts from a PSNR-trained model (init)")

    def _stoppable(self, flag: StopFlag) -> StopFlag | None:
        """``flag`` where work can be abandoned mid-way and exactly undone (``signals.abortable_step``):
        one process (DDP ranks must stop together) and no GradScaler (its skipped steps change it)."""
        single = self.rt.world_size == 1 and self.scaler_g is None and self.scaler_d is None
        return flag if single else None

    def _loop(self, pairs: PairSet, val_sets: dict[str, list[ValImage]], echo: Echo,
              flag: StopFlag) -> tuple[Scores, str | None]:
        """Iterations until max_iters or a stop signal; returns the last validation and the signal."""
        cfg, rt = self.cfg, self.rt
        batches = IterationBatches(pairs, seed=cfg.seed, batch_size=cfg.batch_size, gt_size=cfg.gt_size,
                                   rank=rt.rank, world_size=rt.world_size)
        loader = batch_loader(batches, self.iteration, cfg.max_iters, cfg.workers)
        window, last_val = self.window, {}
        window.start_clock(time.perf_counter())
        bar = RunProgress(self.progress if rt.is_main else "none", cfg.max_iters, self.iteration, echo)
        session_start, elapsed_before = time.perf_counter(), self.elapsed_s
        abort = self._stoppable(flag)
        try:
            for lr_u8, hr_u8 in loader if flag.reason is None else ():
                try:
                    with abortable_step(abort, (self.gen, self.disc), (self.opt_g, self.opt_d)):
                        values = {k: float(v) for k, v in self.step(lr_u8, hr_u8).items()}
                except StepAbandoned:
                    break
                stop = self._agree_stop(flag.reason is not None, values)
                self._check_finite(values)
                self.elapsed_s = elapsed_before + time.perf_counter() - session_start
                window.add(values)
                bar.update(self.iteration, values)
                last_val = self._cadences(window, val_sets, echo) or last_val
                if stop:
                    break
        finally:
            bar.close()
        return last_val, flag.reason

    def _finish(self, reason: str | None, echo: Echo) -> bool:
        """Save where a stop left the run, draw the curves, wait for the other ranks; True if stopped early."""
        interrupted = self.iteration < self.cfg.max_iters
        if interrupted and self.rt.is_main and not ckpt.checkpoint_path(self.out, self.iteration).is_file():
            self.save()
        if interrupted:
            echo(f"stopped ({reason or 'interrupted'}) at iteration {self.iteration}; checkpoint saved: "
                 f"{ckpt.checkpoint_path(self.out, self.iteration)}")
        if self.rt.is_main and self.folder.metrics_path.is_file():
            draw_curves(self.folder.metrics_path, self.out / "curves.png")
        if self.rt.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
        return interrupted

    # -- one iteration's checks and cadences --
    def _check_finite(self, values: dict[str, float]) -> None:
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            last = ckpt.latest_checkpoint(self.out)
            raise TrainingError(f"loss {bad[0]} became {values[bad[0]]} at iteration {self.iteration}; "
                                f"stopped (last good checkpoint: {last or 'none yet'})", path=self.out)

    def _due(self, every: int) -> bool:
        return self.iteration % every == 0 or self.iteration == self.cfg.max_iters

    def _cadences(self, window: _LossWindow, val_sets: dict[str, list[ValImage]], echo: Echo) -> Scores | None:
        """What is due at this iteration: log, validate (with sample and best), checkpoint (with export)."""
        scores = None
        if self.rt.is_main and self._due(self.cfg.log_every):
            self._log(window)
        if val_sets and self._due(self.cfg.val_every):
            scores = self._validate(val_sets, echo)
        if self._due(self.cfg.ckpt_every):
            if self.rt.is_main:
                self.save()
            return scores

    def _log(self, window: _LossWindow) -> None:
        now = time.perf_counter()
        rec = {"iter": self.iteration, "time_s": round(self.elapsed_s, 3), "lr": self.opt_g.param_groups[0]["lr"],
               "it_per_s": round(window.timed / max(now - window.t, 1e-9), 4)}
        rec.update({f"loss/{k}": v / window.n for k, v in window.sums.items()})
        self.folder.append_metrics(rec)
        window.reset(now)

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

    def _validate(self, val_sets: dict[str, list[ValImage]], echo: Echo) -> Scores:
        module = self.ema.module if self.ema is not None else self.gen
        scores, first = evaluate(module, val_sets, self.cfg.scale, self.rt.device)
        rec: dict[str, Any] = {"iter": self.iteration, "time_s": round(self.elapsed_s, 3)}
        for name, (p, s) in scores.items():
            rec[f"val/{name}/psnr"], rec[f"val/{name}/ssim"] = p, s
        self.folder.append_metrics(rec)
        mean_psnr = float(np.mean([p for p, _ in scores.values()]))
        text = ", ".join(f"{n} {p:.2f} dB / {s:.4f}" for n, (p, s) in scores.items())
        echo(f"iter {self.iteration}: validation (EMA) PSNR-Y/SSIM-Y {text}")
        if first is not None:
            save_sample(first, self.out / "samples" / f"iter_{self.iteration:08d}.png")
        if self.best_psnr is None or mean_psnr > self.best_psnr:
            self.best_psnr = mean_psnr
            self.save(best=True)
        draw_curves(self.folder.metrics_path, self.out / "curves.png")
        return scores


def train(cfg: TrainConfig, *, echo: Echo | None = None, progress: bool | str = True,
          resume: str | Path | None = None, on_start: Callable[[], None] | None = None,
          restart: bool = False) -> TrainResult:
    """Train (or resume) a run described by ``cfg``; see ``Trainer`` and ``Trainer.run``. ``progress``:
    "bar", "lines" (a plain line a minute, for a log file), "none", or True/False for bar/none. ``restart``:
    start over in ``cfg.out``, whose run stopped before its first checkpoint."""
    trainer = Trainer(cfg, echo=echo, progress=progress, resume=resume, restart=restart)
    try:
        return trainer.run(on_start)
    finally:
        if trainer.rt.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
