"""Checkpoints: a killed run resumes to the same adapter and curve; incomplete, foreign and signalled runs are handled."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback

from finetune import kinds, params
from finetune.errors import PipelineError
from finetune.model import base_model
from finetune.train.checkpoints import MARKER, CheckpointCallback, Checkpoints, differences
from finetune.train.curves import curves
from finetune.train.training import train_model
from tests.conftest import tiny_llama

LABELS = ["snacks", "dairy eggs", "produce"]
IDENTITY = {"params": {"lora": {"r": 4}}, "data_sha256": "abc"}


class Killed(Exception):
    """Stands for SIGKILL: the process ends mid-step, nothing after it runs."""


class KillAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed


class SignalAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during step `self.step`


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("base")
    tiny_llama(len(tokenizer)).save_pretrained(folder)
    task = params.read_task(name="instacart")
    rows = [{"id": str(i), "text": f"item {i} of kind {i % 3}", "label": LABELS[i % 3]} for i in range(24)]
    examples = kinds.of(task).encode(tokenizer, rows, task)
    task_train = params.replace(task.train, batch_size=2)  # 12 steps
    train = params.replace(params.read("train"), logging_steps=2, checkpoint_minutes=1e-6)  # at every logging step
    lora = params.replace(params.read("lora"), r=4, alpha=8)
    return SimpleNamespace(folder=folder, tokenizer=tokenizer, examples=examples, task_train=task_train, train=train,
                           lora=lora)


def train(setup, checkpoint_dir: Path, identity: dict = IDENTITY, extra: list | None = None, keep: bool = False):
    """What the train_qlora stage does, on the tiny model: resume if it can, train with checkpoints and a curve."""
    model = base_model.dense_copy(base_model.load_model(str(setup.folder), "main",
                                                            base_model.quantization_config(True, "nf4", True)))
    checkpoints = Checkpoints(checkpoint_dir, identity)
    resume = checkpoints.start()
    saving = CheckpointCallback(checkpoints, setup.train.checkpoint_minutes, keep,
                                trained_s=resume[1]["training_s"] if resume else 0.0)
    live = lambda: curves(checkpoints.live_dir, resume=resume is not None)  # noqa: E731
    trained, result, timings = train_model(model, setup.tokenizer, setup.examples, setup.examples[:4],
                                           setup.task_train, setup.train, setup.lora, checkpoints.folder,
                                           callbacks=[live, *(extra or [])], saving=saving, resume_from=resume)
    adapter = {k: v.detach().clone() for k, v in trained.model.state_dict().items() if "lora_" in k}
    with open(checkpoints.live_dir / "plots/metrics/loss.tsv") as f:
        curve = [(row["step"], row["loss"]) for row in csv.DictReader(f, delimiter="\t")]
    checkpoints.finish(keep_last=keep)
    return adapter, SimpleNamespace(**dataclasses.asdict(result), **dataclasses.asdict(timings)), curve


def test_a_killed_run_resumes_to_the_same_adapter_and_the_same_curve(setup, tmp_path):
    whole, whole_result, whole_curve = train(setup, tmp_path / "whole")
    with pytest.raises(Killed):
        train(setup, tmp_path / "killed", extra=[KillAt(7)])
    assert [p.name for p in Checkpoints(tmp_path / "killed", IDENTITY).folders()] == ["checkpoint-6"]
    resumed, result, curve = train(setup, tmp_path / "killed")
    assert result.resumed_from_step == 6 and result.steps == whole_result.steps == 12
    assert set(resumed) == set(whole) and all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert curve == whole_curve  # DVCLive continued the curve: same steps, same losses, nothing twice
    assert result.final_loss == whole_result.final_loss and result.validation_loss == whole_result.validation_loss
    assert not (tmp_path / "killed").exists()  # finished: the checkpoints are gone


def test_a_checkpoint_without_its_marker_is_removed_not_resumed(setup, tmp_path, caplog):
    with pytest.raises(Killed):
        train(setup, tmp_path / "run", extra=[KillAt(5)])
    checkpoints = Checkpoints(tmp_path / "run", IDENTITY)
    (checkpoints.folders()[-1] / MARKER).unlink()  # killed while writing it
    with caplog.at_level(logging.WARNING):
        assert checkpoints.start() is None
    assert "checkpoint-4 is incomplete" in caplog.text and checkpoints.folders() == []


def test_a_checkpoint_made_under_other_params_is_not_resumed(setup, tmp_path, caplog):
    with pytest.raises(Killed):
        train(setup, tmp_path / "run", extra=[KillAt(5)])
    other = {**IDENTITY, "params": {"lora": {"r": 8}}}
    with caplog.at_level(logging.WARNING):
        _, result, _ = train(setup, tmp_path / "run", identity=other)
    assert result.resumed_from_step is None
    assert "made under other params or data (params.lora.r: 4 -> 8); not resumed" in caplog.text


def test_differences_name_each_changed_key():
    assert differences({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0}) == ["a.c: 2 -> 3", "d: None -> 0"]


@pytest.mark.parametrize("wait_s, stop", [(10.0, 4), (0.0, 3)])
def test_sigterm_writes_a_checkpoint_and_stops_with_one_line(setup, tmp_path, monkeypatch, wait_s, stop):
    """Signalled during step 3 of 12, logging every 2: it stops at step 4 (the next logging step, so the curve stays
    exact) when that comes soon, else at the end of step 3. The next run resumes from there."""
    monkeypatch.setattr("finetune.train.checkpoints.SIGTERM_WAIT_S", wait_s)
    with pytest.raises(PipelineError, match=rf"stopped by SIGTERM at step {stop} of 12; checkpoint-{stop} is in .*dvc repro"):
        train(setup, tmp_path / "run", extra=[SignalAt(3)])
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    checkpoints = Checkpoints(tmp_path / "run", IDENTITY)
    assert checkpoints.latest()[1]["step"] == stop
    assert not list(checkpoints.live_dir.rglob("eval*"))  # no validation pass on the way out: the notice gives seconds
    _, result, _ = train(setup, tmp_path / "run")
    assert result.resumed_from_step == stop and result.steps == 12


def test_keep_checkpoint_keeps_the_final_one(setup, tmp_path):
    train(setup, tmp_path / "run", keep=True)
    checkpoints = Checkpoints(tmp_path / "run", IDENTITY)
    assert [p.name for p in checkpoints.folders()] == ["checkpoint-12"]
    assert json.loads((checkpoints.folders()[0] / MARKER).read_text())["step"] == 12


def test_auto_checkpoints_cost_at_most_two_percent():
    """`auto`: the first after 30 s; then as often as the timed save stays within 2% (not more often than every 10 s),
    and at least every 10 minutes."""
    saving = CheckpointCallback(checkpoints=SimpleNamespace(complete=lambda *a: None), every_minutes="auto",
                                keep_last=False)
    assert saving._interval_s == 30
    args, state = SimpleNamespace(output_dir="x", logging_steps=1), SimpleNamespace(global_step=1, max_steps=10)
    for cost, interval in ((2.0, 100.0), (0.1, 10.0), (0.3, 15.0), (60.0, 600.0)):
        saving._asked = __import__("time").perf_counter() - cost
        saving.on_save(args, state, SimpleNamespace())
        assert saving._interval_s == pytest.approx(interval, rel=0.01)
