"""What the report, the model card and the pull-request report say of a run in the same words: the models' names (as
the run was trained, from its run.json), the metrics tables, the training paragraph and the provenance lines.

Plain text from plain data, so every document that shows a run shows it alike.
"""

from __future__ import annotations

METHODS = {"qlora": "QLoRA", "lora": "LoRA", "full": "full fine-tuning"}
VARIANTS = (("use_dora", "DoRA"), ("use_rslora", "rsLoRA"))  # lora params that are on or off
INITS = {"gaussian": "Gaussian init", "pissa": "PiSSA init", "olora": "OLoRA init", "loftq": "LoftQ init"}
BASELINE = "TF-IDF + logistic regression, same split"


def trained_as(run_info: dict) -> str:
    """How the run was trained, in words: `QLoRA`, `LoRA with DoRA and LoRA+`, `full fine-tuning`, `QLoRA and a
    classification head`."""
    params = run_info.get("params", {})
    method = params.get("train", {}).get("method", "qlora")
    head = " and a classification head" if run_info.get("task", {}).get("train", {}).get("objective") == "head" else ""
    if method == "full":
        return METHODS[method] + head
    lora = params.get("lora", {})
    variants = [name for key, name in VARIANTS if lora.get(key)]
    if lora.get("init") in INITS:
        variants.append(INITS[lora["init"]])
    if lora.get("plus_lr_ratio"):
        variants.append("LoRA+")
    return METHODS[method] + (" with " + " and ".join(variants) if variants else "") + head


def model_names(run_info: dict) -> dict[str, str]:
    """Each row of metrics/eval.json named for a reader: the base, the fine-tuned model as trained, the baseline."""
    return {"base": "Base model (zero-shot)", "finetuned": f"Fine-tuned ({trained_as(run_info)})", "classic": BASELINE}


def cell(text) -> str:
    """Text that fits in a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; cells are written as they are given."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_table(evaluation: dict, metrics: tuple[tuple[str, str], ...], names: dict[str, str]) -> str:
    """The models of metrics/eval.json, one row each, in the columns `metrics` ((key, name) pairs) that any has."""
    rows = [row for row in names if row in evaluation]
    columns = [(key, name) for key, name in metrics if any(key in evaluation[row] for row in rows)]
    return table(["model", *(name for _, name in columns)],
                 [[names[row], *(number(evaluation[row].get(key)) for key, _ in columns)] for row in rows])


def training_paragraph(result: dict) -> str:
    """What training did (metrics/train.json, or run.json's result): steps, parameters, losses."""
    modules = result.get("target_modules") or []
    where = f" in {', '.join(modules)}" if modules else ""
    return (f"{result.get('steps')} optimizer steps on {result.get('device')}, "
            f"{result.get('batch_size')} examples a step per process; {result.get('trainable_parameters', 0):,} "
            f"trainable of {result.get('total_parameters', 0):,} parameters{where}. Final training loss "
            f"{result.get('final_loss')}, validation loss {result.get('validation_loss')}.")


def provenance_lines(run_info: dict, base: str | None = None) -> list[str]:
    """The base model (`base`: how to name it, else its name), the data's hash and the libraries, as a list."""
    identity = run_info.get("base_model", {})
    name = base or f"`{identity.get('name', run_info.get('params', {}).get('base_model', {}).get('name'))}`"
    name += (f", files sha256 `{identity['sha256']}`" if "sha256" in identity
             else f", revision `{identity.get('revision')}`")
    libraries = run_info.get("libraries", {})
    return [f"- base model: {name}",
            f"- training and validation data sha256: `{run_info.get('data_sha256')}`",
            "- libraries: " + ", ".join(f"{k} {v}" for k, v in libraries.items())]
