"""End to end: a training killed by a signal, through the real `dvc repro`, resumes from its checkpoints (what only
real processes and DVC show: signals reaching the stage, DVC's locks after a kill, the work folder DVC keeps).
That a resumed run trains to the same weights step for step is proven in process by tests/train/test_checkpoints.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.tiny_pipeline import clone, dvc, redone_stages

# Long enough to be killed twice part-way (30 steps of the tiny model), a checkpoint at every logging step.
LONG = {"tasks.instacart.split": {"max_train": 120}, "tasks.instacart.train": {"batch_size": 4},
        "train": {"logging_steps": 5, "checkpoint_minutes": 1e-6}}


def start_repro(repo: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.Popen(["dvc", "repro", *args], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def checkpoint_steps(repo: Path) -> list[int]:
    """The steps of the complete checkpoints in the work folder."""
    return sorted(int(p.parent.name.split("-")[1])
                  for p in (repo / "models/checkpoints").glob("checkpoint-*/checkpoint.json"))


def wait_for_checkpoint(repo: Path, proc: subprocess.Popen, after_step: int = 0, timeout_s: float = 300) -> int:
    """Until the run writes a checkpoint beyond `after_step`; its step."""
    deadline = time.monotonic() + timeout_s
    while not (steps := [s for s in checkpoint_steps(repo) if s > after_step]):
        assert proc.poll() is None, f"dvc repro ended before a checkpoint beyond step {after_step}:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    return steps[-1]


def wait_for_group(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """Until every process of the run (dvc, and the stage it started) has exited."""
    proc.wait(timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "the stage outlived dvc"
        time.sleep(0.05)


def killed(proc: subprocess.Popen, sig: signal.Signals) -> str:
    """Send `sig` to every process of the run, as a machine going down sends it; what the run printed."""
    os.killpg(proc.pid, sig)
    wait_for_group(proc)
    assert proc.returncode != 0
    return proc.stdout.read()


def outputs(repo: Path) -> dict[str, bytes]:
    """Every file train_qlora writes as a DVC output."""
    return {str(p.relative_to(repo)): p.read_bytes() for folder in ("models/adapter", "metrics/train_live")
            for p in sorted((repo / folder).rglob("*")) if p.is_file()} | {
        "metrics/train.json": (repo / "metrics/train.json").read_bytes()}


def timings(repo: Path) -> dict:
    """What train_qlora noted of its last run beside the results: wall time, speed, the step it resumed from."""
    return json.loads((repo / "metrics/timings/train_qlora.json").read_text())


def loss_curve(repo: Path) -> list[str]:
    """The DVCLive loss curve, a `step<TAB>loss` line per point."""
    lines = (repo / "metrics/train_live/plots/metrics/loss.tsv").read_text().splitlines()
    assert lines[0] == "step\tloss" and len(lines) > 5
    return lines


def test_a_training_killed_twice_resumes_from_its_checkpoints_to_the_outputs_of_an_uninterrupted_run(
        tiny_pipeline, tmp_path):
    """SIGKILL (power loss), then SIGTERM (a pre-emption notice) during the resumed train_qlora: each next `dvc repro`
    resumes from the last checkpoint, and every output (the adapter, run.json, the curves, train.json) is that of a
    run never interrupted, byte for byte (which is also a second run of the same params, in other processes)."""
    repo = clone(tiny_pipeline, tmp_path / "long", LONG)
    first = start_repro(repo, "train_qlora")
    step = wait_for_checkpoint(repo, first)
    killed(first, signal.SIGKILL)

    second = start_repro(repo, "train_qlora")
    wait_for_checkpoint(repo, second, after_step=step)
    log = killed(second, signal.SIGTERM)
    assert int(re.search(r"train_qlora: resuming from step (\d+) ", log)[1]) >= step
    stopped = re.search(r"^error: stopped by SIGTERM at step (\d+) of 30;", log, re.M)
    assert stopped and "Traceback" not in log, log

    resumed = dvc(repo, "repro", "train_qlora")
    assert redone_stages(resumed) == {"train_qlora"}
    assert f"train_qlora: resuming from step {stopped[1]} " in resumed
    assert json.loads((repo / "metrics/train.json").read_text())["steps"] == 30
    assert timings(repo)["resumed_from_step"] == int(stopped[1])
    assert not (repo / "models/checkpoints").exists()  # finished: its checkpoints removed
    after_kills, curve, lock = outputs(repo), loss_curve(repo), (repo / "dvc.lock").read_text()

    whole = dvc(repo, "repro", "--force", "--single-item", "train_qlora")
    assert "resuming" not in whole and timings(repo)["resumed_from_step"] is None
    # byte for byte: the adapter with its run.json, the curves, train.json; so DVC sees the same outputs (and
    # evaluate's inputs are the same: that evaluate gives the same bytes in other processes, test_two_processes.py)
    assert outputs(repo) == after_kills and loss_curve(repo) == curve
    assert (repo / "dvc.lock").read_text() == lock
