"""The pull-request report: what a change did to the run, against a base revision, as one Markdown file with images.

The params and metrics come from `dvc params diff --md` and `dvc metrics diff --md` (DVC's own tables);
the base revision's predictions, loss curve and probe answers are read through `dvc.api` (from the cache
or the DVC remote), so the base run need not be reproduced. CML used to post such reports; it is in
maintenance mode, and a CI step posting this file with `gh pr comment` does the same.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from finetune import kinds, params
from finetune.errors import PipelineError
from finetune.evaluate.plots import curve_from_text, plot_losses
from finetune.files import atomic_path

EVALUATION = "metrics/eval.json"
PREDICTIONS = "metrics/predictions.csv"
DETAILS = "metrics/details.json"
LOSS = "metrics/train_live/plots/metrics/loss.tsv"
VALIDATION_LOSS = "metrics/train_live/plots/metrics/eval/loss.tsv"


def dvc(*args: str) -> str:
    """The output of a dvc command run in this repository; a failure is one PipelineError line."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise PipelineError(f"dvc {' '.join(args)} failed: {last}")
    return proc.stdout.strip()


def metrics_files(dvc_yaml: str = "dvc.yaml") -> list[str]:
    """The metrics files the stages declare, in stage order."""
    stages = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8"))["stages"]
    return [m if isinstance(m, str) else next(iter(m)) for stage in stages.values() for m in stage.get("metrics", [])]


def read_at(rev: str | None, path: str) -> bytes | None:
    """A file as it is at `rev` (git or DVC tracked, from the cache or the remote), or in the workspace if None;
    None where it is not there, or its outputs were never pushed. Any other failure is one line that says what."""
    if rev is None:
        return Path(path).read_bytes() if Path(path).is_file() else None
    import dvc.api
    from dvc.config import NoRemoteError
    from dvc.exceptions import CheckoutError, DownloadError, FileMissingError, PathMissingError
    from dvc.scm import RevError

    try:
        return dvc.api.read(path, repo=".", rev=rev, mode="rb")
    except RevError:
        raise PipelineError(f"pr-report: unknown revision {rev!r} (fetch it: git fetch origin {rev})") from None
    except (PathMissingError, FileMissingError, NoRemoteError, CheckoutError, DownloadError):
        return None  # not in that revision, or in neither the cache nor the remote: the report says so
    except Exception as e:  # what else dvc.api raises (a broken remote, a dvc.yaml that does not parse) is named
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PipelineError(f"pr-report: cannot read {path} at {rev!r}: {detail}") from None


def _predictions(data: bytes | None) -> pd.DataFrame | None:
    return pd.read_csv(io.BytesIO(data), keep_default_na=False) if data else None


def _curve(data: bytes | None) -> tuple[list[float], list[float]]:
    return curve_from_text(data.decode("utf-8")) if data else ([], [])


def _logging_steps(rev: str | None) -> int:
    data = read_at(rev, "params.yaml")
    return int(yaml.safe_load(data)["train"]["logging_steps"]) if data else 1


def build(base: str, out: Path, image_url: str | None = None) -> Path:
    """Write `out` (Markdown) and its images into the folder beside it named after it; returns the image folder.

    `image_url`: where the images will be served (a CI step uploads them), else links are relative to `out`."""
    images = out.parent / out.stem
    link = (image_url.rstrip("/") if image_url else images.name)
    params_md = dvc("params", "diff", base, "--md") or "No param changed."
    # Every test metric, changed or not (what a reviewer compares); of the others, those that changed.
    test_md = dvc("metrics", "diff", base, "--targets", EVALUATION, "--all", "--md", "--precision", "4")
    others = [m for m in metrics_files() if m != EVALUATION]
    others_md = (dvc("metrics", "diff", base, "--targets", *others, "--md", "--precision", "4") if others else "") \
        or "No other metric changed."
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    sections = [f"# Fine-tuning: `{base}` against this change ({head or 'workspace'})", "",
                "## Params changed", "", params_md, "", "## Test metrics", "", test_md or "(none)", "",
                "## Other metrics changed", "", others_md, ""]
    runs = {name: {"predictions": _predictions(read_at(rev, PREDICTIONS)),
                   "details": json.loads(read_at(rev, DETAILS) or b"{}")} for name, rev in (("old", base), ("new", None))}
    if runs["new"]["predictions"] is None:
        raise PipelineError(f"pr-report: {PREDICTIONS} is missing: run `dvc repro` (or `dvc pull`) first")
    kind = kinds.of(params.read_task())
    curves = [(title, _curve(read_at(rev, LOSS)), _curve(read_at(rev, VALIDATION_LOSS)), _logging_steps(rev))
              for title, rev in ((base, base), ("this change", None))]
    with atomic_path(images) as folder:  # the images and the report appear together, or not at all
        folder.mkdir()
        sections += kind.review_sections(base, runs["old"], runs["new"], folder, link)
        plot_losses(curves, folder / "loss.png")
        sections += ["## Loss curves", "", f"![loss curves]({link}/loss.png)", ""]
        if runs["old"]["predictions"] is None:
            sections += [f"The base revision's outputs were not found (push them: `dvc push` on `{base}`).", ""]
        with atomic_path(out) as report:
            report.write_text("\n".join(sections), encoding="utf-8")
    return images
