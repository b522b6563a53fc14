"""The Markdown report: results, loss curve, confusion matrices or probe answers, examples, params and provenance."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

MODELS = (("base", "Base model (zero-shot)"), ("finetuned", "QLoRA fine-tuned"), ("classic", "TF-IDF + logistic regression"))
PNG_METADATA = {"Software": None}  # keeps the images byte-identical across reruns


def results_table(evaluation: dict) -> str:
    lines = ["| model | accuracy | macro-F1 | weighted-F1 |", "|---|---|---|---|"]
    for key, name in MODELS:
        m = evaluation[key]
        lines.append(f"| {name} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['weighted_f1']:.3f} |")
    return "\n".join(lines)


def per_class_table(per_class: dict) -> str:
    lines = ["| label | support | base F1 | fine-tuned F1 | classic F1 |", "|---|---|---|---|---|"]
    for label, row in per_class["finetuned"].items():
        lines.append(f"| {label} | {row['support']} | {per_class['base'][label]['f1']:.3f} | "
                     f"{row['f1']:.3f} | {per_class['classic'][label]['f1']:.3f} |")
    return "\n".join(lines)


def plot_confusion(predictions: pd.DataFrame, column: str, path: Path, title: str) -> None:
    labels = sorted(set(predictions["actual"]) | set(predictions[column]))
    fig, ax = plt.subplots(figsize=(9, 8))
    ConfusionMatrixDisplay.from_predictions(predictions["actual"], predictions[column], labels=labels, ax=ax,
                                            xticks_rotation="vertical", colorbar=False, cmap="Blues")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata=PNG_METADATA)
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


def save_loss_plot(fig, ax, path: Path) -> None:
    """Label a loss plot's axes, save it byte-identically across reruns and close it."""
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss on answer tokens")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata=PNG_METADATA)
    plt.close(fig)


def sample_rows(predictions: pd.DataFrame, correct: bool, n: int) -> pd.DataFrame:
    """`n` right or wrong fine-tuned predictions, chosen reproducibly."""
    rows = predictions[(predictions["actual"] == predictions["finetuned"]) == correct]
    return rows.sample(n=min(n, len(rows)), random_state=0) if len(rows) else rows


def cell(text) -> str:
    """Text that fits in a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def examples_table(rows: pd.DataFrame) -> str:
    lines = ["| text | actual | fine-tuned | base | classic |", "|---|---|---|---|---|"]
    for r in rows.itertuples():
        lines.append(f"| {cell(r.text)} | {r.actual} | {r.finetuned} | {r.base} | {r.classic} |")
    return "\n".join(lines)


GENERATION_METRICS = (("bleu", "BLEU"), ("rouge_l", "ROUGE-L"), ("perplexity", "perplexity"),
                      ("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"),
                      ("repeated_sentence_rate", "repeats a sentence"), ("mean_words", "words per answer"))


def generation_table(metrics: dict) -> str:
    lines = ["| model | " + " | ".join(name for _, name in GENERATION_METRICS) + " |",
             "|---|" + "---|" * len(GENERATION_METRICS)]
    for key, name in MODELS[:2]:
        lines.append(f"| {name} | " + " | ".join(f"{metrics[key][k]:.3f}" for k, _ in GENERATION_METRICS) + " |")
    return "\n".join(lines)


def probes_table(probes: list[dict]) -> str:
    lines = ["| prompt | base model | fine-tuned |", "|---|---|---|"]
    lines += [f"| {cell(p['prompt'])} | {cell(p['base'])} | {cell(p['finetuned'])} |" for p in probes]
    return "\n".join(lines)


def answers_table(predictions: pd.DataFrame, n: int) -> str:
    """`n` test prompts, chosen reproducibly, with the reference and both models' answers."""
    rows = predictions.sample(n=min(n, len(predictions)), random_state=0).sort_index()
    lines = ["| last user turn | reference | base model | fine-tuned |", "|---|---|---|---|"]
    lines += [f"| {cell(r.prompt)} | {cell(r.reference)} | {cell(r.base)} | {cell(r.finetuned)} |" for r in rows.itertuples()]
    return "\n".join(lines)


def classification_sections(evaluation: dict, details: dict, predictions: pd.DataFrame, image_dir: Path,
                            samples: int) -> list[str]:
    plot_confusion(predictions, "finetuned", image_dir / "confusion_finetuned.png", "Fine-tuned model, test split")
    plot_confusion(predictions, "base", image_dir / "confusion_base.png", "Base model, test split")
    rel = image_dir.name
    gain = evaluation["finetuned"]["accuracy"] - evaluation["base"]["accuracy"]
    return [
        "## Test results", "", results_table(evaluation), "",
        f"Fine-tuning changed test accuracy by {gain:+.3f}.", "",
        "## Confusion matrices", "",
        f"![fine-tuned confusion matrix]({rel}/confusion_finetuned.png)", "",
        f"![base confusion matrix]({rel}/confusion_base.png)", "",
        "## Per-class F1", "", per_class_table(details["per_class"]), "",
        "## Sample predictions", "",
        "Right (fine-tuned):", "", examples_table(sample_rows(predictions, True, samples)), "",
        "Wrong (fine-tuned):", "", examples_table(sample_rows(predictions, False, samples)), "",
    ]


def generation_sections(details: dict, predictions: pd.DataFrame, samples: int) -> list[str]:
    return [
        "## Test results", "",
        generation_table(details["metrics"]), "",
        "BLEU (sacrebleu, 0-100) and ROUGE-L F1 (rouge-score, 0-1) of greedy answers against the test references; "
        "perplexity of the reference answers (lower is better); distinct-n: share of unique word n-grams; "
        "repeats a sentence: share of answers that say a sentence twice.", "",
        "## Probe prompts", "", probes_table(details["probes"]) if details["probes"] else "(none in params)", "",
        "## Sample test answers", "", answers_table(predictions, samples), "",
    ]


def build_report(task: dict, evaluation: dict, details: dict, training: dict, split_sizes: dict,
                 predictions: pd.DataFrame, run_info: dict, all_params: dict, live_dir: Path, image_dir: Path,
                 samples: int) -> str:
    """Write the images into `image_dir` and return the Markdown text that links them."""
    image_dir.mkdir(parents=True, exist_ok=True)
    plot_loss(live_dir, image_dir / "loss.png", all_params["train"]["logging_steps"])
    if task["kind"] == "generation":
        results = generation_sections(details, predictions, samples)
    else:
        results = classification_sections(evaluation, details, predictions, image_dir, samples)
    libraries = run_info.get("libraries", {})
    identity = run_info.get("base_model", {})
    return "\n".join([
        f"# Fine-tuning report: {task['name']}",
        "",
        f"Task `{task['name']}` ({task['kind']}), base model `{identity.get('name')}`, QLoRA adapter "
        f"r={all_params['lora']['r']}, {split_sizes['train']} training / {split_sizes['validation']} validation / "
        f"{split_sizes['test']} test examples.",
        "",
        *results,
        "## Training",
        "",
        f"{training['steps']} steps in {training['runtime_s']} s on {training['device']} "
        f"({training['tokens_per_s']} tokens/s, peak memory {training['peak_memory_gib']} GiB); "
        f"{training['trainable_parameters']:,} trainable of {training['total_parameters']:,} parameters "
        f"in {', '.join(training['target_modules'])}. Final training loss {training['final_loss']}, "
        f"validation loss {training['validation_loss']}.",
        "",
        f"![loss curve]({image_dir.name}/loss.png)",
        "",
        "## Params",
        "",
        "```yaml",
        yaml.safe_dump({"task": task["name"], f"tasks.{task['name']}": task["params"], **all_params},
                       sort_keys=False, allow_unicode=True).strip(),
        "```",
        "",
        "## Provenance",
        "",
        f"- base model: `{identity.get('name')}` " + (f"sha256 `{identity['sha256']}`" if "sha256" in identity
                                                    else f"revision `{identity.get('revision')}`"),
        f"- training and validation data sha256: `{run_info.get('data_sha256')}`",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in libraries.items()),
        "",
    ])
