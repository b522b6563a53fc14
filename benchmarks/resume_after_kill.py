"""train_qlora killed with SIGKILL about half-way on the CPU default, then resumed: time lost, and the same eval.json?

Run from the repository root after `make repro`, with nothing else running (the timings are wall time):

    python -m benchmarks.resume_after_kill
    python -m benchmarks.resume_after_kill --sigterm   # only: how long SIGTERM takes to a checkpoint and exit

1. `dvc repro --force --single-item train_qlora`, killed (SIGKILL, the whole process group, as a power loss
   would) once the DVCLive curve passes half of the steps; then `dvc repro --single-item train_qlora`
   resumes from the last checkpoint, and `dvc repro evaluate` scores it.
2. The same stage uninterrupted (`--force`), and `dvc repro evaluate` again.
Both leave the workspace as `dvc repro` would, so dvc.lock stays true. Results go to benchmarks/results/.
With --sigterm: the stage is sent SIGTERM (as a pre-empted machine gets it) once its curve has 30 steps;
timed until the stage has exited with its checkpoint written; then the workspace is restored from DVC's cache.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.measure import RESULTS, cpu_model
from finetune import params, provenance

EPOCHS = Path("models/checkpoints/live/plots/metrics/epoch.tsv")  # the Trainer logs its epoch, a fraction


def dvc(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True, env=os.environ)
    if proc.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stdout + proc.stderr


def last_step(total_steps: int) -> int:
    """The training step of the curve's last point (DVCLive's own step counts the points)."""
    try:
        lines = EPOCHS.read_text().splitlines()[1:]
    except FileNotFoundError:
        return 0
    return round(float(lines[-1].split("\t")[1]) * total_steps) if lines else 0


def killed_half_way(total_steps: int) -> dict:
    """Start the stage; SIGKILL every process of it once the curve has a point past half of the steps."""
    start = time.perf_counter()
    proc = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "train_qlora"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while last_step(total_steps) < total_steps / 2:
        if proc.poll() is not None:
            raise SystemExit("the stage ended before half-way")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    markers = sorted(Path("models/checkpoints").glob("checkpoint-*/checkpoint.json"))
    checkpoint = json.loads(markers[-1].read_text()) if markers else None
    return {"seconds_until_killed": round(time.perf_counter() - start, 1), "curve_step_at_kill": last_step(total_steps),
            "last_checkpoint_step": checkpoint and checkpoint["step"]}


def sigterm_to_exit(total_steps: int) -> dict:
    """SIGTERM to every process of the stage at step 30 or more: seconds until every one has exited, and what it wrote."""
    shutil.rmtree("models/checkpoints", ignore_errors=True)
    log_file = tempfile.TemporaryFile("w+")  # not a pipe: nobody reads it while the stage runs, and a full one blocks it
    proc = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "train_qlora"], start_new_session=True,
                            stdout=log_file, stderr=subprocess.STDOUT, text=True)
    while last_step(total_steps) < 30:
        if proc.poll() is not None:
            raise SystemExit("the stage ended before step 30")
        time.sleep(0.2)
    step_at_signal = last_step(total_steps)
    signalled = time.perf_counter()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait()  # reaped, or the group never looks empty
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - signalled
    log_file.seek(0)
    log = log_file.read()
    markers = sorted(Path("models/checkpoints").glob("checkpoint-*/checkpoint.json"))
    result = {"curve_step_at_signal": step_at_signal, "seconds_to_exit": round(seconds, 2),
              "checkpoint_step": json.loads(markers[-1].read_text())["step"] if markers else None,
              "error_line": next((l for l in log.splitlines() if l.startswith("error: ")), None)}
    shutil.rmtree("models/checkpoints")
    dvc("checkout")  # the adapter of the finished run, from DVC's cache
    return result


def planned_steps() -> int:
    """Optimizer steps of the run the params describe (the CPU keeps the task's batch size)."""
    task, train = params.read_task(), params.read("train")
    rows = sum(1 for _ in open("data/split/train.jsonl", encoding="utf-8"))
    return math.ceil(math.ceil(rows / task.train.batch_size) * task.train.epochs / train.gradient_accumulation)


def eval_digest() -> tuple[str, dict]:
    data = Path("metrics/eval.json").read_bytes()
    return hashlib.md5(data).hexdigest(), json.loads(data)


def write(result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{result['benchmark']}_{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}", file=sys.stderr)


def header(name: str) -> dict:
    return {"benchmark": name, "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H%M%SZ"),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count()}, "libraries": provenance.library_versions()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigterm", action="store_true", help="only: how long SIGTERM takes to a checkpoint and exit")
    if parser.parse_args().sigterm:
        write({**header("sigterm_to_exit"), **sigterm_to_exit(planned_steps())})
        return
    dvc("repro", "split")
    steps = planned_steps()
    kill = killed_half_way(steps)
    resumed_s, resumed_log = dvc("repro", "--single-item", "train_qlora")
    resumed_train = json.loads(Path("metrics/train.json").read_text())
    dvc("repro", "evaluate")
    resumed_md5, resumed_eval = eval_digest()

    whole_s, _ = dvc("repro", "--force", "--single-item", "train_qlora")
    whole_train = json.loads(Path("metrics/train.json").read_text())
    dvc("repro", "evaluate")
    whole_md5, whole_eval = eval_digest()

    interrupted_s = kill["seconds_until_killed"] + resumed_s
    write({
        **header("resume_after_kill"), "steps": steps, "killed": kill,
        "resumed": {"stage_seconds": round(resumed_s, 1), "resumed_from_step": resumed_train["resumed_from_step"],
                    "said": next((l for l in resumed_log.splitlines() if "resuming from step" in l), None),
                    "train_json_runtime_s": resumed_train["runtime_s"], "eval_md5": resumed_md5,
                    "finetuned_accuracy": resumed_eval["finetuned"]["accuracy"]},
        "uninterrupted": {"stage_seconds": round(whole_s, 1), "train_json_runtime_s": whole_train["runtime_s"],
                          "eval_md5": whole_md5, "finetuned_accuracy": whole_eval["finetuned"]["accuracy"]},
        "interrupted_total_stage_seconds": round(interrupted_s, 1),
        "overhead_vs_uninterrupted": round(interrupted_s / whole_s - 1, 4),
        "eval_json_identical": resumed_md5 == whole_md5,
    })


if __name__ == "__main__":
    main()
