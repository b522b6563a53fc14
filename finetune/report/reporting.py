"""The Markdown report of a run: its kind's results (finetune.kinds), the loss curve, the training, the params and
the provenance, in the words the model card uses (finetune/tables.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from finetune import kinds
from finetune.evaluate.plots import plot_loss
from finetune.tables import model_names, provenance_lines, trained_as, training_paragraph


def build_report(task: dict, evaluation: dict, details: dict, training: dict, split_sizes: dict,
                 predictions: pd.DataFrame, run_info: dict, all_params: dict, live_dir: Path, image_dir: Path,
                 samples: int) -> str:
    """Write the images into `image_dir` and return the Markdown text that links them."""
    image_dir.mkdir(parents=True, exist_ok=True)
    plot_loss(live_dir, image_dir / "loss.png", all_params["train"]["logging_steps"])
    kind = kinds.get(task["kind"])
    results = kind.report_sections(evaluation, details, predictions, model_names(run_info), image_dir, samples)
    identity = run_info.get("base_model", {})
    adapter = f", LoRA rank {all_params['lora']['r']}" if all_params["train"]["method"] != "full" else ""
    return "\n".join([
        f"# Fine-tuning report: {task['name']}",
        "",
        f"Task `{task['name']}` ({task['kind']}), base model `{identity.get('name')}`, trained with "
        f"{trained_as(run_info)}{adapter}; {split_sizes['train']} training / {split_sizes['validation']} validation / "
        f"{split_sizes['test']} test examples.",
        "",
        *results,
        "## Training",
        "",
        training_paragraph(training),
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
        *provenance_lines(run_info),
        "",
    ])
