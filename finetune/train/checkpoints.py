"""Checkpoints a killed training run resumes from, tied to the params and data they were made under.

The transformers Trainer writes a checkpoint folder (adapter, optimizer, scheduler, RNG states,
trainer state with the step, hence the data position); this module decides when, makes each one
complete with a marker written last (the Trainer itself resumes from the highest-numbered folder
without checking that it is whole), keeps the DVCLive curve as it was at that step, and refuses a
checkpoint made under other params or data. The folder is not a DVC output, so DVC neither deletes it
before the stage reruns nor caches it, and the stage's run cache stays on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune.files import write_json
from finetune.train import distributed

log = logging.getLogger(__name__)

MARKER = "checkpoint.json"  # written last: a folder without it is incomplete and never resumed
LIVE = "live"               # the DVCLive folder: the curve being written, and its copy in each checkpoint
PREFIX = "checkpoint-"
AUTO_OVERHEAD = 0.02        # `auto`: a checkpoint costs at most 2% of the training time ...
AUTO_FIRST_S = 30.0         # ... the first 30 s into training (no save has been timed yet) ...
AUTO_MIN_S = 10.0           # ... then no more often than every 10 s ...
AUTO_MAX_S = 600.0          # ... and no later than every 10 minutes
SIGTERM_WAIT_S = 10.0       # on SIGTERM, go on to the next logging step if it comes this soon (the curve stays exact)


NOT_IDENTITY = ("checkpoint_minutes", "keep_checkpoint")  # train params that say how often to save, not what is trained


def run_identity(run_info: dict) -> dict:
    """What a checkpoint belongs to: the run's record (params, data hash, base model, versions) less NOT_IDENTITY."""
    train = {k: v for k, v in run_info["params"]["train"].items() if k not in NOT_IDENTITY}
    return {**run_info, "params": {**run_info["params"], "train": train}}


def fingerprint(identity: dict) -> str:
    """One hash over everything a checkpoint belongs to: the params, the data hash, the base model, the versions."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def differences(old: dict, new: dict) -> list[str]:
    """The keys whose values differ, as `key: old -> new`, for the line that says why a checkpoint is not resumed."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _fsync_tree(folder: Path) -> None:
    """Flush every file to disk, so that the marker written after them survives a power loss only if they do."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _step(folder: Path) -> int:
    return int(folder.name[len(PREFIX):]) if folder.name[len(PREFIX):].isdigit() else -1


class Checkpoints:
    """The checkpoint folder of one stage: `live/` (the curve being written) and `checkpoint-<step>/` folders."""

    def __init__(self, folder: str | Path, identity: dict):
        self.folder = Path(folder)
        self.identity = identity
        self.fingerprint = fingerprint(identity)

    @property
    def live_dir(self) -> Path:
        return self.folder / LIVE

    def folders(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted((p for p in self.folder.iterdir() if p.is_dir() and _step(p) >= 0), key=_step)

    def latest(self) -> tuple[Path, dict] | None:
        """The newest complete checkpoint made under this run's identity; newer incomplete or foreign ones are removed."""
        for path in reversed(self.folders()):
            marker = path / MARKER
            if not marker.is_file():
                log.warning("%s is incomplete (no %s: the run was killed while writing it); removed", path, MARKER)
                shutil.rmtree(path)
                continue
            info = json.loads(marker.read_text())
            if info.get("fingerprint") == self.fingerprint:
                return path, info
            changed = differences(info.get("identity", {}), self.identity)
            log.warning("%s was made under other params or data (%s); not resumed, removed",
                        path, "; ".join(changed[:3]) or "a different run")
            shutil.rmtree(path)
        return None

    def start(self) -> tuple[Path, dict] | None:
        """Where training starts: the latest usable checkpoint (its curve restored into `live/`), or nothing."""
        latest = self.latest()
        if self.live_dir.exists():
            shutil.rmtree(self.live_dir)
        if latest is not None and (latest[0] / LIVE).is_dir():
            shutil.copytree(latest[0] / LIVE, self.live_dir)
        return latest

    def complete(self, path: Path, step: int, elapsed_s: float) -> None:
        """Make the Trainer's freshly written `path` a checkpoint: the curve copied in, flushed, then the marker."""
        if self.live_dir.is_dir():
            shutil.copytree(self.live_dir, path / LIVE, dirs_exist_ok=True)
        _fsync_tree(path)
        write_json(path / MARKER, {"fingerprint": self.fingerprint, "identity": self.identity, "step": step,
                                   "training_s": round(elapsed_s, 3), "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
        for other in self.folders():
            if other != path:
                shutil.rmtree(other)

    def discard_work(self) -> None:
        """After a failed run: the work copy of the curve goes (each checkpoint holds its own); checkpoints stay."""
        shutil.rmtree(self.live_dir, ignore_errors=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()

    def finish(self, keep_last: bool) -> None:
        """After a successful run: remove the checkpoints (or keep the last) and the work copy of the curve."""
        if keep_last:
            shutil.rmtree(self.live_dir, ignore_errors=True)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


class CheckpointCallback(TrainerCallback):
    """Ask the Trainer for a checkpoint on schedule (at a logging step, so the resumed curve is the same) and on SIGTERM.

    On SIGTERM (a pre-emption notice, which leaves 30 s to 2 min) it checkpoints at the next logging step if
    that comes within 10 s, else at the end of the step running, then stops training; the caller sees
    `stopped_by_signal` and exits non-zero.
    """

    def __init__(self, checkpoints: Checkpoints, every_minutes: float | str, keep_last: bool, trained_s: float = 0.0):
        self.checkpoints = checkpoints
        self.every = every_minutes
        self.keep_last = keep_last
        self.trained_before_s = trained_s  # training time of the runs this one resumes
        self.stopped_by_signal: int | None = None
        self.saved: list[int] = []
        self._interval_s = AUTO_FIRST_S if every_minutes == "auto" else float(every_minutes) * 60
        self._began = self._last = self._asked = self._step_ended = 0.0
        self._step_s = 0.0  # the last step's duration
        self._previous_handler = None

    def elapsed_s(self) -> float:
        return self.trained_before_s + time.perf_counter() - self._began

    def _on_sigterm(self, signum, frame) -> None:
        self.stopped_by_signal = signum
        log.warning("SIGTERM: writing a checkpoint at the next logging step (or at the end of this one), then stopping")

    def on_train_begin(self, args, state, control, **kwargs):
        self._began = self._last = time.perf_counter()
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def release(self) -> None:
        """Give SIGTERM back to the handler it had (also when training ended by an exception)."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def on_train_end(self, args, state, control, **kwargs):
        self.release()

    def _due(self, args, state) -> bool:
        if state.global_step >= state.max_steps:  # the run ends now, signalled or not
            return self.keep_last
        if self.stopped_by_signal is not None:
            to_boundary = -state.global_step % args.logging_steps
            return to_boundary == 0 or to_boundary * self._step_s > SIGTERM_WAIT_S
        waited = time.perf_counter() - self._last
        return 0 < self._interval_s <= waited and state.global_step % args.logging_steps == 0

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self._step_s, self._step_ended = now - (self._step_ended or self._began), now
        # Rank 0 decides for every process: a rank that saved or stopped alone would wait for the others forever.
        due, self.stopped_by_signal = distributed.from_main((self._due(args, state), self.stopped_by_signal))
        if due:
            control.should_save = True
            self._asked = now
            if self.stopped_by_signal is not None:
                control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_by_signal is not None:  # no validation pass on the way out: the notice gives seconds
            control.should_evaluate = False
        return control

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
        if not distributed.is_main():  # the Trainer wrote its checkpoint from rank 0; the marker and curve come from it
            return control
        self.checkpoints.complete(path, state.global_step, self.elapsed_s())
        self.saved.append(state.global_step)
        if self.every == "auto":  # the Trainer's writing and ours, timed together
            cost = time.perf_counter() - self._asked
            self._interval_s = min(AUTO_MAX_S, max(AUTO_MIN_S, cost / AUTO_OVERHEAD))
        self._last = time.perf_counter()
        log.info("checkpoint at step %d written to %s", state.global_step, path)
        return control
