"""The tiny pipeline the end-to-end tests drive with the real `dvc` commands, in temporary git repos.

It is built and reproduced once per test run (the `tiny_pipeline` fixture in tests/conftest.py); a test module that
needs a built repository takes a clone of it. Clones share one DVC cache, so `dvc checkout` gives a clone every
output at once and DVC's run cache restores any stage whose code, data and params a clone leaves unchanged. The
cache starts with this checkout's export of the embedded base model (`make setup` made it), so no test repository
exports that model again.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

COPIED = ["dvc.yaml", "params.yaml", "stages", "finetune", "configs", "presets", ".gitignore", ".dvcignore", "data/raw"]
TINY = {
    "tasks.instacart.split": {"max_train": 48, "max_validation": 8, "max_test": 24},
    "tasks.instacart.train": {"batch_size": 8},
    "tasks.chitchat.split": {"max_train": 16, "max_validation": 4, "max_test": 8},
    "tasks.chitchat.train": {"batch_size": 8, "max_length": 64},
    "tasks.chitchat.evaluate": {"max_new_tokens": 4},
    "base_model": {"name": "models/base/tiny"},
    "train": {"logging_steps": 2},
    "evaluate": {"batch_size": 12},
}
HYDRA = {"enabled": "true", "config_dir": ".", "config_name": "configs/compose"}  # .dvc/config's [hydra]
BASE_MODEL_STAGE = "python -m stages.base_model "  # the start of its cmd in dvc.yaml


def dvc(repo: Path, *args: str, check: bool = True, env: dict | None = None) -> str:
    """`dvc args` (or `git args` when the first is "git") in `repo`, with the project's environment; its output."""
    import subprocess

    env = {**os.environ, **(env or {}), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com", "DVC_NO_ANALYTICS": "1"}
    cmd = ["dvc", *args] if args[0] != "git" else list(args)
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 or not check, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def ran_stages(output: str) -> set[str]:
    """The stages a `dvc repro` or `dvc exp run` ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def restored_stages(output: str) -> set[str]:
    """The stages it restored from DVC's run cache instead of running (their inputs were seen before)."""
    return {line.split("'")[1] for line in output.splitlines() if "is cached - skipping run" in line}


def redone_stages(output: str) -> set[str]:
    """The stages whose inputs changed, run or restored from the run cache: all but the unchanged ones."""
    return ran_stages(output) | restored_stages(output)


def set_params(repo: Path, overrides: dict) -> None:
    """Update sections of the repo's params.yaml: {"dotted.section": {key: value}}."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, values in overrides.items():
        section = params
        for part in key.split("."):
            section = section[part]
        section.update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def seed_cache(cache: Path, source: Path = ROOT / ".dvc" / "cache") -> int:
    """Copy `source`'s run-cache entries of the base_model stage into `cache`, with the files they restore (hard links
    where the file system allows); returns how many. None found: the first `dvc repro` exports the model itself."""
    entries = 0
    for entry in sorted((source / "runs").glob("*/*/*")) if (source / "runs").is_dir() else []:
        run = yaml.safe_load(entry.read_text())
        if not str(run.get("cmd", "")).startswith(BASE_MODEL_STAGE):
            continue
        objects = [out["md5"] for out in run.get("outs", [])]
        for md5 in [m for m in objects if m.endswith(".dir")]:
            objects += [item["md5"] for item in yaml.safe_load(_object(source, md5).read_text())]
        if not all(_object(source, md5).is_file() for md5 in objects):
            continue
        for md5 in objects:
            _link(_object(source, md5), _object(cache, md5))
        _link(entry, cache / entry.relative_to(source))
        entries += 1
    return entries


def _object(cache: Path, md5: str) -> Path:
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def share_cache(repo: Path, cache: Path) -> None:
    """Point the repo at the shared cache, checked out by hard links (tiny files, and one 540 MB base model)."""
    dvc(repo, "cache", "dir", "--local", str(cache))
    dvc(repo, "config", "--local", "cache.type", "hardlink,copy")


def build(repo: Path, tiny_model: Path, cache: Path, overrides: dict) -> Path:
    """A git + DVC repo holding this project's pipeline, a tiny Llama as base model (`dvc add`ed, as a user adds a
    model of their own: queued runs see only what git or DVC track) and the given params."""
    repo.mkdir(parents=True)
    for name in COPIED:
        src, dst = ROOT / name, repo / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    set_params(repo, overrides)
    shutil.copytree(tiny_model, repo / "models/base/tiny")
    dvc(repo, "git", "init", "-q", "-b", "main")
    dvc(repo, "init", "-q")
    for key in ("enabled", "config_dir", "config_name"):  # `dvc exp run -S` composes params.yaml as the project's does
        dvc(repo, "config", f"hydra.{key}", HYDRA[key])
    share_cache(repo, cache)
    dvc(repo, "add", "models/base/tiny")
    dvc(repo, "git", "add", "-A")
    dvc(repo, "git", "commit", "-qm", "pipeline")
    return repo


@dataclass(frozen=True)
class Built:
    """The tiny pipeline after its first `dvc repro`, committed: `first_repro` is what that command printed, `seeded`
    how many run-cache entries of the base model the shared cache started with, `imports` the finetune modules each
    stage ran (tests/import_tracer)."""

    path: Path
    cache: Path
    first_repro: str
    seeded: int
    imports: Path


def build_once(folder: Path, tiny_model: Path) -> Built:
    """The tiny pipeline in `folder`, built, reproduced and committed, unless an earlier call left it there."""
    record = folder / "built.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        return Built(**{**saved, "path": Path(saved["path"]), "cache": Path(saved["cache"]),
                        "imports": Path(saved["imports"])})
    cache, imports = folder / "dvc-cache", folder / "imports"
    imports.mkdir(parents=True)
    seeded = seed_cache(cache)
    repo = build(folder / "repo", tiny_model, cache, TINY)
    first = dvc(repo, "repro", env={"PYTHONPATH": str(ROOT / "tests/import_tracer"), "IMPORT_TRACE_DIR": str(imports)})
    dvc(repo, "git", "add", "-A")
    dvc(repo, "git", "commit", "-qm", "first run")
    built = Built(path=repo, cache=cache, first_repro=first, seeded=seeded, imports=imports)
    record.write_text(json.dumps({"path": str(repo), "cache": str(cache), "first_repro": first, "seeded": seeded,
                                  "imports": str(imports)}))
    return built


def clone(built: Built, dest: Path, overrides: dict | None = None, shared_cache: bool = True) -> Path:
    """A git clone of the built pipeline with its outputs checked out from the shared cache (`shared_cache` false: a
    cache of its own, empty until pulled); `overrides` of params.yaml are committed."""
    dvc(dest.parent, "git", "clone", "-q", str(built.path), str(dest))
    if shared_cache:
        share_cache(dest, built.cache)
        dvc(dest, "checkout", "-q")
    if overrides:
        set_params(dest, overrides)
        dvc(dest, "git", "commit", "-qam", f"params: {', '.join(overrides)}")
    return dest
