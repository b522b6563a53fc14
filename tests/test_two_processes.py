"""End to end: the stages on two processes (distributed.processes 2), through the real `dvc repro`: each of
train_qlora and evaluate relaunches itself under accelerate, rank 0 alone writes, one failing rank ends them all.
That two processes train as one does is proven by tests/train/test_distributed.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.tiny_pipeline import TINY, clone, dvc, ran_stages, redone_stages

FROM_TRAINING = {"train_qlora", "evaluate", "report", "export"}


@pytest.fixture(scope="module")
def two_process_repo(tiny_pipeline, tmp_path_factory) -> Path:
    """The tiny pipeline with distributed.processes 2: each of train_qlora and evaluate runs under accelerate launch."""
    return clone(tiny_pipeline, tmp_path_factory.mktemp("two_processes") / "repo", {"distributed": {"processes": 2}})


def written(trace: Path, repo: Path) -> dict[int, set[str]]:
    """What each rank wrote inside `repo` (tests/write_tracer): {rank: paths relative to the repo}."""
    found: dict[int, set[str]] = {}
    for log in trace.glob("rank-*.jsonl"):
        paths = {Path(json.loads(line)["path"]) for line in log.read_text().splitlines()}
        found[int(log.stem.split("-")[1])] = {str(p.relative_to(repo)) for p in paths
                                             if p.is_relative_to(repo) and "__pycache__" not in p.parts}
    return found


def test_repro_on_two_processes_runs_both_stages_and_only_rank_0_writes(two_process_repo, tmp_path):
    repo, trace = two_process_repo, tmp_path / "trace"
    trace.mkdir()
    output = dvc(repo, "repro", env={"PYTHONPATH": str(ROOT / "tests/write_tracer"), "WRITE_TRACE_DIR": str(trace)})
    assert ran_stages(output) >= {"train_qlora", "evaluate"}  # they read distributed.processes
    assert redone_stages(output) == FROM_TRAINING
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["processes"] == 2 and train["batch_size"] == TINY["tasks.instacart.train"]["batch_size"] // 2
    assert set(json.loads((repo / "metrics/eval.json").read_text())) == {"base", "finetuned", "classic"}
    by_rank = written(trace, repo)
    assert set(by_rank) == {0, 1}  # both stages ran two processes, and the tracer saw both
    assert by_rank[1] == set(), f"rank 1 wrote {sorted(by_rank[1])[:10]}"
    assert {"models/adapter", "metrics/train.json", "metrics/train_live", "metrics/eval.json",
            "metrics/predictions.csv"} <= by_rank[0]
    assert any(p.startswith("models/checkpoints/live/") for p in by_rank[0])  # DVCLive's curve, from rank 0


def test_evaluate_on_two_processes_writes_what_one_process_writes(two_process_repo):
    repo = two_process_repo
    outputs = ["metrics/eval.json", "metrics/details.json", "metrics/predictions.csv", "metrics/confusion.csv"]
    two = {name: (repo / name).read_bytes() for name in outputs}
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["distributed"]["processes"] = 1
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        proc = subprocess.run([sys.executable, "-m", "stages.evaluate", "data/split", "models/adapter", *outputs,
                               "metrics/timings/evaluate.json"],
                              cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        params_file.write_text(original)
    for name in outputs:
        assert (repo / name).read_bytes() == two[name], f"{name} differs between 2 processes and 1"


def test_an_error_on_one_process_ends_them_all_with_one_line(two_process_repo):
    """Rank 1 refuses to train (tests/fail_on_rank.py): the stage exits 1 with that one line, and no traceback of the
    launcher's; nothing is written."""
    repo = two_process_repo
    before = (repo / "models/adapter/adapter_model.safetensors").read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the module comes from this checkout, the stage from the repo
    proc = subprocess.run([sys.executable, "-m", "tests.fail_on_rank", "data/split", "models/adapter",
                           "metrics/train.json", "metrics/train_live", "models/checkpoints",
                           "metrics/timings/train_qlora.json"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "error: rank 1 cannot train (process 1 of 2)"
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    assert (repo / "models/adapter/adapter_model.safetensors").read_bytes() == before
