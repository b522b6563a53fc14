"""Working as a team, end to end on the tiny pipeline: a DVC remote (a local folder), a git remote (a bare repo),
`dvc push` / `dvc pull`, `dvc exp push` / `dvc exp pull`, and the CI workflow's script with its PR report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.tiny_pipeline import clone as clone_pipeline
from tests.tiny_pipeline import dvc, redone_stages

PIPELINE_SCRIPT = ROOT / ".github/scripts/pipeline.sh"


@pytest.fixture(scope="module")
def team(tmp_path_factory, tiny_pipeline) -> dict[str, Path]:
    """Clone A, after `dvc repro`, committed and pushed to the git remote, its outputs pushed to the DVC remote. The
    clones made from the git remote (B, C and CI's) have caches of their own: what they get, they pull."""
    root = tmp_path_factory.mktemp("team")
    origin, storage = root / "origin.git", root / "dvc-storage"
    dvc(root, "git", "init", "-q", "--bare", "-b", "main", str(origin))
    a = clone_pipeline(tiny_pipeline, root / "a")
    dvc(a, "remote", "add", "-d", "storage", str(storage))  # README: `dvc remote add -d storage <path or s3://...>`
    dvc(a, "git", "remote", "set-url", "origin", str(origin))
    dvc(a, "git", "commit", "-qam", "the DVC remote")
    dvc(a, "git", "push", "-q", "origin", "main")
    dvc(a, "push")
    return {"root": root, "origin": origin, "storage": storage, "a": a}


def clone(team: dict, name: str, branch: str = "main") -> Path:
    path = team["root"] / name
    dvc(team["root"], "git", "clone", "-q", "-b", branch, str(team["origin"]), str(path))
    return path


def test_a_fresh_clone_pulls_instead_of_retraining_and_gets_the_same_report(team):
    b = clone(team, "b")
    dvc(b, "pull")
    output = dvc(b, "repro")
    assert redone_stages(output) == set(), output
    for path in ("metrics/report.md", "metrics/eval.json", "models/adapter/adapter_model.safetensors"):
        assert (b / path).read_bytes() == (team["a"] / path).read_bytes(), path


def test_an_experiment_pushed_from_one_clone_is_listed_and_pulled_in_another(team):
    a = team["a"]
    dvc(a, "exp", "run", "-n", "rank-32", "-S", "lora.r=32")
    dvc(a, "exp", "push", "origin", "rank-32")  # its commit to the git remote, its outputs to the DVC remote
    c = clone(team, "c")
    assert "rank-32" in dvc(c, "exp", "list", "origin")
    dvc(c, "exp", "pull", "origin", "rank-32")
    shown = json.loads(dvc(c, "exp", "show", "--json"))
    revs = {rev["name"]: rev["data"] for baseline in shown for exp in baseline.get("experiments") or []
            for rev in exp["revs"]}
    assert "rank-32" in revs
    assert revs["rank-32"]["params"]["params.yaml"]["data"]["lora"]["r"] == 32
    assert "finetuned" in revs["rank-32"]["metrics"]["metrics/eval.json"]["data"]
    dvc(c, "exp", "apply", "rank-32")  # its outputs come from the DVC remote: nothing to retrain
    assert json.loads((c / "models/adapter/adapter_config.json").read_text())["r"] == 32


def test_the_ci_script_reproduces_a_pull_request_and_writes_its_report(team):
    """What the workflow runs on a pull request, on a branch that changes lora.r: the base's outputs are in the DVC
    remote, the branch's are reproduced and pushed, and the report compares the two."""
    a = team["a"]
    dvc(a, "git", "checkout", "-q", "-b", "rank-8")
    params = yaml.safe_load((a / "params.yaml").read_text())
    params["lora"]["r"] = 8
    (a / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc(a, "git", "commit", "-qam", "lora.r: 8")
    dvc(a, "git", "push", "-q", "origin", "rank-8")
    ci = clone(team, "ci", branch="rank-8")  # as actions/checkout leaves it, with the base branch fetched
    output = run_script(ci, [str(PIPELINE_SCRIPT), "origin/main", "pr-report.md"])
    assert "Running stage 'train_qlora'" in output and "Running stage 'prepare'" not in output  # pulled, not rerun
    report = (ci / "pr-report.md").read_text()
    assert "## Params changed" in report and re.search(r"\| *lora\.r *\| *16 *\| *8 *\|", report), report
    assert "## Test metrics" in report and "finetuned.accuracy" in report  # every test metric, changed or not
    assert re.search(r"\| *metrics/train.json *\| *trainable_parameters *\| *32768 *\| *16384 *\|", report), report
    assert "![confusion matrices](pr-report/confusion.png)" in report and "![loss curves](pr-report/loss.png)" in report
    for image in ("confusion.png", "loss.png"):
        assert (ci / "pr-report" / image).stat().st_size > 10_000


def run_script(repo: Path, cmd: list[str]) -> str:
    """`cmd` in `repo` with the project's virtual environment first on PATH, as the workflow activates it."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_a_fresh_clone_shows_the_committed_metrics_and_diffs_a_branch_before_any_run(tiny_pipeline, tmp_path):
    """The small metrics files are kept in git (`cache: false`), so a reviewer's clone with an empty DVC cache shows
    them, and `dvc metrics diff` between two branches reads them from git."""
    repo = tmp_path / "fresh"
    dvc(tmp_path, "git", "clone", "-q", str(tiny_pipeline.path), str(repo))
    assert not (repo / ".dvc" / "cache").exists() and not (repo / "models" / "adapter").exists()
    committed = json.loads((tiny_pipeline.path / "metrics/eval.json").read_text())
    shown = json.loads(dvc(repo, "metrics", "show", "--json"))
    assert shown[""]["data"]["metrics/eval.json"]["data"] == committed
    assert {"metrics/split.json", "metrics/train.json", "metrics/data.json"} <= set(shown[""]["data"])

    dvc(repo, "git", "checkout", "-qb", "change")
    changed = {**committed, "finetuned": {**committed["finetuned"], "accuracy": committed["finetuned"]["accuracy"] + 0.125}}
    (repo / "metrics/eval.json").write_text(json.dumps(changed))
    dvc(repo, "git", "commit", "-qam", "a change")
    diff = json.loads(dvc(repo, "metrics", "diff", "main", "change", "--json"))["metrics/eval.json"]
    assert diff["finetuned.accuracy"]["diff"] == pytest.approx(0.125) and list(diff) == ["finetuned.accuracy"]
