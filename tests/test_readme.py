"""The README's commands work exactly as written: the block after `make repro`, in a fresh shell (a clean environment)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.tiny_pipeline import clone

MARKER = "<!-- next-commands:"


def next_commands() -> str:
    """The bash block that follows the marker in the README."""
    text = (ROOT / "README.md").read_text()
    match = re.search(re.escape(MARKER) + r".*?\n```bash\n(.*?)```", text, re.S)
    assert match, "README: the next-commands block is missing"
    return match.group(1)


@pytest.fixture(scope="module")
def after_make_repro(tmp_path_factory, tiny_pipeline) -> Path:
    """A tiny pipeline as `make repro` leaves a clone: reproduced, with the project's .venv in it."""
    repo = clone(tiny_pipeline, tmp_path_factory.mktemp("readme") / "repo")
    (repo / ".venv").symlink_to(ROOT / ".venv")  # make setup's virtual environment
    return repo


def fresh_shell(repo: Path, script: str) -> subprocess.CompletedProcess:
    """`script` in bash -e with a login's bare environment: no virtual environment, nothing of this test process."""
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(["bash", "-e", "-c", script], cwd=repo, env=env, capture_output=True, text=True)


def test_the_next_commands_run_as_written_in_a_fresh_shell(after_make_repro):
    script = next_commands()
    assert script.startswith("source .venv/bin/activate")
    proc = fresh_shell(after_make_repro, script)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "lora.r" in proc.stdout and "trainable_parameters" in proc.stdout  # exp show's columns, metrics diff's rows


def test_without_activating_the_environment_they_fail(after_make_repro):
    """What the README warns of: in a fresh shell `dvc` is not found until .venv is activated."""
    without = "\n".join(line for line in next_commands().splitlines() if not line.startswith("source "))
    proc = fresh_shell(after_make_repro, without)
    assert proc.returncode != 0 and "dvc: command not found" in proc.stderr
