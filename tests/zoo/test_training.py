"""The loop: exact resume, early stopping, best/last checkpoints, NaN stop (synthetic data: a unit test)."""
from __future__ import annotations

import csv

import pytest
import torch

from biozoo.runtime import TrainingError
from biozoo.zoo.config import EarlyStopping, TrainingConfig
from biozoo.zoo.training import train_loop


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1))


def _batch(g: torch.Generator):
    x = torch.rand(4, 1, 16, 16, generator=g)
    return x, x.roll(1, dims=-1) * 2


def _loss(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def _val(model):
    x, y = _batch(torch.Generator().manual_seed(123))
    return {"val_loss": _loss(model, (x, y)).item()}


CFG = TrainingConfig(epochs=4, steps_per_epoch=5, lr=1e-2, schedule="cosine", early_stopping=None, seed=3)


def test_resume_equals_uninterrupted_run(tmp_path):
    full = _net()
    train_loop(full, _loss, _batch, _val, CFG, tmp_path / "full", progress=False)
    part = _net()
    train_loop(part, _loss, _batch, _val, CFG, tmp_path / "part", stop_after_epochs=2, progress=False)
    resumed = _net()  # a fresh process would start from scratch weights; resume must restore everything
    state = train_loop(resumed, _loss, _batch, _val, CFG, tmp_path / "part", resume=True, progress=False)
    assert state.epoch == 4
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    rows = list(csv.DictReader(open(tmp_path / "part" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]


def test_early_stopping_and_best_checkpoint(tmp_path):
    cfg = CFG.model_copy(update={"epochs": 50, "lr": 0.0, "schedule": "none",
                                 "early_stopping": EarlyStopping(patience=2)})
    state = train_loop(_net(), _loss, _batch, _val, cfg, tmp_path, progress=False)
    assert state.stopped_early and state.epoch == 3 and state.best_epoch == 1
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    def bad_loss(model, batch):
        return _loss(model, batch) * float("nan")

    with pytest.raises(TrainingError, match="training diverged. Lower training.lr"):
        train_loop(_net(), bad_loss, _batch, _val, CFG, tmp_path, progress=False)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(TrainingError, match="no last.pt"):
        train_loop(_net(), _loss, _batch, _val, CFG, tmp_path, resume=True, progress=False)
