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
from sklearn.metrics import ConfusionMatrixDisplay

from finetune.errors import PipelineError
from finetune.report.reporting import PNG_METADATA, cell, curve_from_text, plt, save_loss_plot

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
    None where it does not exist there."""
    if rev is None:
        return Path(path).read_bytes() if Path(path).is_file() else None
    import dvc.api

    try:
        return dvc.api.read(path, repo=".", rev=rev, mode="rb")
    except Exception as e:  # dvc raises several types (missing path, missing cache, unknown revision)
        if "unknown" in str(e).lower() and "revision" in str(e).lower():
            raise PipelineError(f"pr-report: unknown revision {rev!r} (fetch it: git fetch origin {rev})") from None
        return None


def _predictions(data: bytes | None) -> pd.DataFrame | None:
    return pd.read_csv(io.BytesIO(data), keep_default_na=False) if data else None


def _curve(data: bytes | None) -> tuple[list[float], list[float]]:
    return curve_from_text(data.decode("utf-8")) if data else ([], [])


def _logging_steps(rev: str | None) -> int:
    data = read_at(rev, "params.yaml")
    return int(yaml.safe_load(data)["train"]["logging_steps"]) if data else 1


def plot_confusions(runs: list[tuple[str, pd.DataFrame]], path: Path) -> None:
    """The fine-tuned model's confusion matrix of each run, side by side, on the same labels."""
    labels = sorted(set().union(*(set(p["actual"]) | set(p["finetuned"]) for _, p in runs)))
    size = max(6, 0.45 * len(labels) + 3)
    fig, axes = plt.subplots(1, len(runs), figsize=(size * len(runs), size))
    for ax, (title, predictions) in zip(list(axes) if len(runs) > 1 else [axes], runs):
        ConfusionMatrixDisplay.from_predictions(predictions["actual"], predictions["finetuned"], labels=labels, ax=ax,
                                                xticks_rotation="vertical", colorbar=False, cmap="Blues")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata=PNG_METADATA)
    plt.close(fig)


def plot_losses(curves: list[tuple[str, tuple, tuple, int]], path: Path) -> None:
    """Training (lines) and validation (points) loss of each run on one axis; DVCLive steps scaled to optimizer steps.
    The base is drawn wide and the change thin and dashed over it, so that two curves that nearly agree both show."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = ({"color": "tab:gray", "linewidth": 3.5, "alpha": 0.6}, {"color": "tab:blue", "linewidth": 1.5, "linestyle": "--"})
    for (title, (steps, values), (vsteps, vvalues), every), style in zip(curves, styles):
        if steps:
            ax.plot([s * every for s in steps], values, label=f"{title}: training", **style)
        if vsteps:
            ax.plot([s * every for s in vsteps], vvalues, "o", color=style["color"], markersize=7 if style is styles[0] else 4,
                    label=f"{title}: validation")
    save_loss_plot(fig, ax, path)


def probes_table(old: list[dict], new: list[dict], base: str) -> str:
    """Each probe prompt's fine-tuned answer at the base revision and now."""
    before = {p["prompt"]: p["finetuned"] for p in old}
    lines = [f"| prompt | fine-tuned at `{base}` | fine-tuned now |", "|---|---|---|"]
    for probe in new:
        lines.append(f"| {cell(probe['prompt'])} | {cell(before.get(probe['prompt'], '(not asked)'))} | "
                     f"{cell(probe['finetuned'])} |")
    return "\n".join(lines)


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
    old_pred, new_pred = _predictions(read_at(base, PREDICTIONS)), _predictions(read_at(None, PREDICTIONS))
    if new_pred is None:
        raise PipelineError(f"pr-report: {PREDICTIONS} is missing: run `dvc repro` (or `dvc pull`) first")
    images.mkdir(parents=True, exist_ok=True)
    if "finetuned" in new_pred and "actual" in new_pred:  # classification
        runs = ([(f"fine-tuned at {base}", old_pred)] if old_pred is not None and "actual" in old_pred else []) + [
            ("fine-tuned, this change", new_pred)]
        plot_confusions(runs, images / "confusion.png")
        sections += ["## Confusion matrices (test split)", "", f"![confusion matrices]({link}/confusion.png)", ""]
    else:
        old_details, new_details = (json.loads(d) if d else {} for d in (read_at(base, DETAILS), read_at(None, DETAILS)))
        sections += ["## Probe answers", "", probes_table(old_details.get("probes", []), new_details.get("probes", []),
                                                          base), ""]
    curves = [(title, _curve(read_at(rev, LOSS)), _curve(read_at(rev, VALIDATION_LOSS)), _logging_steps(rev))
              for title, rev in ((base, base), ("this change", None))]
    plot_losses(curves, images / "loss.png")
    sections += ["## Loss curves", "", f"![loss curves]({link}/loss.png)", ""]
    if old_pred is None:
        sections += [f"The base revision's outputs were not found (push them: `dvc push` on `{base}`).", ""]
    out.write_text("\n".join(sections), encoding="utf-8")
    return images
