"""The pictures of a run: confusion matrices and loss curves, as PNG files byte-identical across reruns."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

PNG_METADATA = {"Software": None}  # keeps the images byte-identical across reruns


def plot_confusion(predictions: pd.DataFrame, column: str, path: Path, title: str) -> None:
    """Actual against predicted labels of one model (a column of the predictions table)."""
    labels = sorted(set(predictions["actual"]) | set(predictions[column]))
    fig, ax = plt.subplots(figsize=(9, 8))
    ConfusionMatrixDisplay.from_predictions(predictions["actual"], predictions[column], labels=labels, ax=ax,
                                            xticks_rotation="vertical", colorbar=False, cmap="Blues")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata=PNG_METADATA)
    plt.close(fig)


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


def read_curve(path: Path) -> tuple[list[float], list[float]]:
    """A DVCLive .tsv series as (steps, values); empty if it was not logged."""
    return curve_from_text(path.read_text(encoding="utf-8")) if path.is_file() else ([], [])


def curve_from_text(text: str) -> tuple[list[float], list[float]]:
    """A DVCLive .tsv series' text as (steps, values)."""
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    value = [k for k in rows[0] if k not in ("step", "timestamp")][0] if rows else None
    return [float(r["step"]) for r in rows], [float(r[value]) for r in rows]


def plot_loss(live_dir: Path, path: Path, logging_steps: int) -> None:
    """Training and validation loss; DVCLive counts one step per log, so steps are scaled back to optimizer steps."""
    fig, ax = plt.subplots(figsize=(7, 4))
    curves = (("loss.tsv", "training loss", None), ("eval/loss.tsv", "validation loss", "o"))
    for name, label, marker in curves:
        steps, values = read_curve(live_dir / "plots" / "metrics" / name)
        if steps:
            ax.plot([s * logging_steps for s in steps], values, marker=marker, label=label)
    save_loss_plot(fig, ax, path)


def plot_losses(curves: list[tuple[str, tuple, tuple, int]], path: Path) -> None:
    """Training (lines) and validation (points) loss of each run on one axis; DVCLive steps scaled to optimizer steps.
    The first is drawn wide and the second thin and dashed over it, so that two curves that nearly agree both show."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = ({"color": "tab:gray", "linewidth": 3.5, "alpha": 0.6}, {"color": "tab:blue", "linewidth": 1.5, "linestyle": "--"})
    for (title, (steps, values), (vsteps, vvalues), every), style in zip(curves, styles):
        if steps:
            ax.plot([s * every for s in steps], values, label=f"{title}: training", **style)
        if vsteps:
            ax.plot([s * every for s in vsteps], vvalues, "o", color=style["color"], markersize=7 if style is styles[0] else 4,
                    label=f"{title}: validation")
    save_loss_plot(fig, ax, path)


def save_loss_plot(fig, ax, path: Path) -> None:
    """Label a loss plot's axes, save it byte-identically across reruns and close it."""
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss on answer tokens")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata=PNG_METADATA)
    plt.close(fig)
