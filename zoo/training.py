"""The training loop: deterministic, resumable, with early stopping and best/last checkpoints.

Data comes in as a `make_batch(generator)` callable so that the loop owns every random number: the torch
Generator that draws patches is saved in each checkpoint together with model, optimizer and scheduler state,
and `--resume` therefore continues exactly as an uninterrupted run would (checkpoints are written at epoch ends;
an interrupted epoch is redone from its start). Checkpoints hold state_dicts only and are written atomically.

Checkpoints are read with `torch.load(weights_only=True)` only (`load_checkpoint`): tensors, numbers, strings and
plain containers; a checkpoint that holds any other pickled object is refused, never executed. Everything the loop
saves (optimizer and scheduler state, the generator's and torch's RNG states as uint8 tensors, the loop state as
plain numbers) is of those types, so `--resume` stays exact without trusting the file.
"""
from __future__ import annotations

import csv
import math
import os
import pickle
import random
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from biozoo.runtime import TrainingError

from .config import TrainingConfig

Batch = tuple[torch.Tensor, ...]
MakeBatch = Callable[[torch.Generator], Batch]
LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]
Validate = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class LoopState:
    epoch: int = 0
    step: int = 0
    best: Optional[float] = None
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save via a temporary file in the same folder, then rename: never a half-written checkpoint."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, what: str = "checkpoint") -> Any:
    """A checkpoint's content, read with weights_only=True; TrainingError (never a traceback, never code run) when
    it holds pickled objects, is truncated, or is not a torch file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal below says what matters
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message suggests turning the safe mode off: keep only the line naming what was refused
        reason = next((line.strip()[:200] for line in str(e).splitlines() if "GLOBAL" in line or "nsupported" in line),
                      "content that is not a tensor or a plain value")
        raise TrainingError(
            f"{what} '{path}' holds pickled Python objects, not only tensors and plain values ({reason}); biozoo "
            "loads checkpoints with weights_only=True and never runs code from them. Delete the file (and train "
            "again), or use a checkpoint biozoo wrote"
        ) from None
    except Exception as e:  # truncated or foreign files: RuntimeError, EOFError, OSError, ValueError, ...
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise TrainingError(
            f"{what} '{path}' cannot be read ({type(e).__name__}: {first}); it is truncated or not a torch "
            "checkpoint. Delete it and train again (without --resume)"
        ) from None


def _resume(last: Path, model: torch.nn.Module, opt, sched, generator: torch.Generator) -> LoopState:
    """Restore everything `train_loop` saved in last.pt; TrainingError when it does not fit this run."""
    ckpt = load_checkpoint(last, "--resume: last.pt")
    keys = ("model", "optimizer", "generator", "torch_rng", "loop")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in keys):
        got = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise TrainingError(f"--resume: '{last}' is not a biozoo training checkpoint (expected the keys {list(keys)}, "
                            f"got {got}); start without --resume in a new --out folder")
    try:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if sched is not None and ckpt.get("scheduler"):
            sched.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        return LoopState(**ckpt["loop"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise TrainingError(
            f"--resume: '{last}' does not match this run ({type(e).__name__}: {first}); it was written for another "
            "architecture, optimizer or recipe. Resume with the recipe it was trained with, or start a new --out"
        ) from None


def _optimizer(model: torch.nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainingConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(1, cfg.epochs // 10))
    return None


def _improved(value: float, state: LoopState, cfg: TrainingConfig) -> bool:
    es = cfg.early_stopping
    mode, delta = (es.mode, es.min_delta) if es else ("min", 0.0)
    if state.best is None:
        return True
    return value < state.best - delta if mode == "min" else value > state.best + delta


def train_loop(
    model: torch.nn.Module,
    loss_fn: LossFn,
    make_batch: MakeBatch,
    validate: Validate,
    cfg: TrainingConfig,
    run_dir: Path,
    resume: bool = False,
    stop_after_epochs: Optional[int] = None,
    progress: bool = True,
) -> LoopState:
    """Train `model` in place; write best.pt, last.pt and metrics.csv into `run_dir`; return the loop state.

    `stop_after_epochs` ends this call early (as an interruption would) without marking the run finished.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"--out '{run_dir}' is a file; the run needs a folder: choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    generator = seed_everything(cfg.seed)
    opt = _optimizer(model, cfg)
    sched = _scheduler(opt, cfg)
    state = LoopState()
    last = run_dir / "last.pt"
    if resume:
        if not last.is_file():
            raise TrainingError(f"--resume: no last.pt in '{run_dir}'; start without --resume")
        state = _resume(last, model, opt, sched, generator)
        if (run_dir / "best.pt").is_file():  # read back after training: refuse a hostile one before any work
            best = load_checkpoint(run_dir / "best.pt", "--resume: best.pt")
            if not isinstance(best, dict) or not all(isinstance(v, torch.Tensor) for v in best.values()):
                raise TrainingError(f"--resume: '{run_dir / 'best.pt'}' is not a state dict of tensors; delete it "
                                    "(the next better epoch writes it again) or start a new --out")
    monitor = cfg.early_stopping.monitor if cfg.early_stopping else "val_loss"
    epochs_this_call = 0
    while state.epoch < cfg.epochs and not state.stopped_early:
        model.train()
        total = 0.0
        for i in range(cfg.steps_per_epoch):
            batch = make_batch(generator)
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss.item()} at epoch {state.epoch}, step {i}: training diverged. Lower "
                    f"training.lr (now {cfg.lr}), check the data for NaN/Inf, or enable batch_norm"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            state.step += 1
            if progress and sys.stderr.isatty():
                sys.stderr.write(f"\repoch {state.epoch + 1}/{cfg.epochs} step {i + 1}/{cfg.steps_per_epoch} "
                                 f"loss {total / (i + 1):.4f}")
        model.eval()
        with torch.no_grad():
            metrics = {"epoch": state.epoch + 1, "train_loss": total / cfg.steps_per_epoch, **validate(model)}
        if monitor not in metrics:
            raise TrainingError(f"early_stopping.monitor '{monitor}' is not a metric; available: {sorted(metrics)}")
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(metrics[monitor])
        elif sched is not None:
            sched.step()
        metrics["lr"] = opt.param_groups[0]["lr"]
        state.history.append(metrics)
        state.epoch += 1
        if _improved(metrics[monitor], state, cfg):
            state.best, state.best_epoch, state.bad_epochs = float(metrics[monitor]), state.epoch, 0
            atomic_save(model.state_dict(), run_dir / "best.pt")
        else:
            state.bad_epochs += 1
            if cfg.early_stopping and state.bad_epochs >= cfg.early_stopping.patience:
                state.stopped_early = True
        if progress and sys.stderr.isatty():
            sys.stderr.write(f"  val {metrics[monitor]:.4f} (best {state.best:.4f} @ {state.best_epoch})\n")
        atomic_save(
            {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "loop": asdict(state),
            },
            last,
        )
        write_metrics(state.history, run_dir / "metrics.csv")
        epochs_this_call += 1
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            break
    return state


def write_metrics(history: list[dict[str, float]], path: Path) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """curves.png: losses per epoch (matplotlib when installed; otherwise skipped quietly)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    epochs = [row["epoch"] for row in history]
    for key in ("train_loss", "val_loss"):
        if all(key in row and math.isfinite(row[key]) for row in history):
            ax.plot(epochs, [row[key] for row in history], label=key)
    ax.set_xlabel("epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
