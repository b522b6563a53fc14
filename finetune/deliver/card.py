"""The model card: a README.md with Hugging Face metadata that says what a trained artifact does and how it was made.

Everything comes from the adapter's `run.json` and `metrics/eval.json`, so the card describes the
model that was evaluated, not what params.yaml says today; the task's own words (what its data is, an input to
try, what to warn of) come from its params' `card` part. What differs by kind of task comes from the kind.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData

from finetune import kinds
from finetune.deliver.trained import method_of
from finetune.errors import PipelineError
from finetune.files import atomic_path
from finetune.model.folders import is_local
from finetune.model.embedded import EMBEDDED_DIR, EMBEDDED_PACKAGE
from finetune.param_schemas import CardParams
from finetune.tables import metrics_table, model_names, provenance_lines, trained_as, training_paragraph

HUB_EXPORTS = {  # local base folders this project exports from a known hub model -> (hub id, how it was made)
    EMBEDDED_DIR: ("HuggingFaceTB/SmolLM2-135M-Instruct",
                   f"exported from the 4-bit (Q4_1) GGUF in the `{EMBEDDED_PACKAGE}` package by "
                   "the pipeline's `base_model` stage (its weights are close to the hub's, not equal)"),
}
MERGES = {  # run.json's merge.into (finetune.deliver.merge) -> what the merged weights are
    "original": "The adapter was merged into the base's own weights, not the 4-bit ones it was trained against, so its "
                "answers can differ slightly from the evaluated adapter's (the agreement is under Export).",
    "dequantized": "The adapter was merged into the 4-bit weights it was trained against, dequantized: this is the "
                   "evaluated adapter-on-4-bit model as one plain model.",
}
PIPELINE_TAGS = {"AutoModelForCausalLM": "text-generation", "AutoModelForSequenceClassification": "text-classification"}
WHERE = "path/to/this/folder"  # what the loading code opens: the user puts this folder's path or hub id there
NO_CARD = CardParams(description="", example="your text here", limits=[])  # a run whose task's params are gone


def _artifact(run_info: dict, artifact: str) -> tuple[str | None, str, str, str]:
    """(library_name, base_model_relation, its name, what it is) of an artifact of this run."""
    if method_of(run_info) == "full":
        whole = {"merged": ("transformers", "finetune", "fine-tuned model", "a fine-tuned version of"),
                 "gguf": (None, "finetune", "GGUF model", "a GGUF file (llama.cpp) of a fine-tuned version of")}
        return whole.get(artifact, whole["merged"])
    return {"adapter": ("peft", "adapter", "LoRA adapter", "a LoRA adapter for"),
            "merged": ("transformers", "finetune", "merged model", "a LoRA adapter merged into the weights of"),
            "gguf": (None, "finetune", "GGUF model", "a GGUF file (llama.cpp) of a LoRA adapter merged into")}[artifact]


def _known_export(name: str) -> tuple[str, str] | None:
    """(hub id, how it was made) when `name` is a local folder this project exports from a hub model."""
    parts = Path(name).parts
    return next((known for folder, known in HUB_EXPORTS.items() if parts[-len(folder.parts):] == folder.parts), None)


def base_hub_id(name: str) -> str | None:
    """The hub id of the base model: the id itself, the hub model a known local export came from, or None."""
    if not is_local(name):
        return name
    known = _known_export(name)
    return known[0] if known else None


def _hub_dataset(task: dict) -> str | None:
    """The hub dataset the task was trained on: its `hub:` data source, as run.json records it."""
    source = str(task.get("data", {}).get("source", ""))
    return source.removeprefix("hub:") if source.startswith("hub:") else None


def _metadata(run_info: dict, artifact: str) -> ModelCardData:
    task, params = run_info["task"], run_info["params"]
    library, relation, _, _ = _artifact(run_info, artifact)
    base = base_hub_id(params["base_model"]["name"])
    data_id = _hub_dataset(task)
    method = method_of(run_info)
    tags = [*({"qlora": ["lora", "qlora"], "lora": ["lora"]}.get(method, ["full-fine-tuning"])),
            kinds.get(task["kind"]).hub_tag, *(["gguf"] if artifact == "gguf" else []), "dvc"]
    # pipeline_tag is how the model is called: a causal LM writes its answer, even when it classifies.
    pipeline = PIPELINE_TAGS[kinds.get(task["kind"]).card_auto_class(run_info)]
    return ModelCardData(base_model=base, library_name=library, tags=tags, datasets=[data_id] if data_id else None,
                         pipeline_tag=pipeline, base_model_relation=relation if base else None)


def _summary(run_info: dict, artifact: str, base_text: str, about: CardParams) -> list[str]:
    task = run_info["task"]
    _, _, noun, what = _artifact(run_info, artifact)
    how = {"qlora": " (the frozen base in 4-bit)", "lora": " (the frozen base in full precision)",
           "full": " (every weight trained)"}[method_of(run_info)]
    data = about.description or "the task's own data"
    if task.get("data", {}).get("source"):
        data += f" (`data.source: {task['data']['source']}`)"
    merge = run_info.get("merge", {}).get("into") if artifact != "adapter" else None
    return [f"# {task['name']}: {noun} fine-tuned from {base_text}", "",
            f"This is {what} {base_text}, trained with {trained_as(run_info)}{how} to "
            f"{kinds.get(task['kind']).card_job(run_info)}. Task `{task['name']}` ({task['kind']}); data: {data}.",
            *(["", MERGES[merge]] if merge in MERGES else []), ""]


def _evaluation(run_info: dict, metrics: dict | None) -> list[str]:
    if metrics is None:
        return ["## Evaluation", "", "Not evaluated yet: `dvc repro evaluate` writes metrics/eval.json.", ""]
    kind = kinds.get(run_info["task"]["kind"])
    return ["## Evaluation", "", metrics_table(metrics, kind.metrics, model_names(run_info)), "", kind.metrics_note, ""]


def _loading_code(run_info: dict, artifact: str, example: str) -> list[str]:
    params = run_info["params"]
    kind = kinds.get(run_info["task"]["kind"])
    auto = kind.card_auto_class(run_info)
    if artifact == "gguf":
        return ["## How to use it", "", "With llama.cpp, where MODEL.gguf is one of the `.gguf` files in this folder:", "",
                "```bash", kind.card_gguf_command(run_info, example), "```", ""]
    if artifact == "adapter":
        quant = params["quantization"]
        four_bit = method_of(run_info) == "qlora"
        base_name, revision = params["base_model"]["name"], params["base_model"]["revision"]
        hub_id = base_hub_id(base_name) or base_name
        where = f'"{hub_id}"' + (f', revision="{revision}"' if not is_local(base_name) else "")
        imports = [auto, "AutoTokenizer", *(["BitsAndBytesConfig"] if four_bit else [])]
        lines = ["from peft import PeftModel", f"from transformers import {', '.join(imports)}", "",
                 f'MODEL = "{WHERE}"  # this folder, or the hub id it is published under']
        head = kind.card_head_arguments(run_info)  # a classification head: its labels, read before the base loads
        if head:
            lines += ["tokenizer = AutoTokenizer.from_pretrained(MODEL)", *head[0]]
        extra = f", {head[1]}" if head else ""
        if four_bit:
            lines += ["quantization = BitsAndBytesConfig(  # the 4-bit base it was trained on",
                      f'    load_in_4bit=True, bnb_4bit_quant_type="{quant["quant_type"]}", '
                      f'bnb_4bit_use_double_quant={quant["double_quant"]})',
                      f"base = {auto}.from_pretrained({where}, quantization_config=quantization{extra})"]
        else:
            lines += [f"base = {auto}.from_pretrained({where}{extra})"]
        lines += ["model = PeftModel.from_pretrained(base, MODEL).eval()"]
        intro = "Load the base model, then the adapter on it (the tokenizer is saved beside the adapter):"
    else:
        head = None
        lines = [f"from transformers import {auto}, AutoTokenizer", "",
                 f'MODEL = "{WHERE}"  # this folder, or the hub id it is published under',
                 f'model = {auto}.from_pretrained(MODEL, dtype="auto").eval()']
        intro = "A plain transformers model:"
    lines += [*([] if head else ["tokenizer = AutoTokenizer.from_pretrained(MODEL)"]), "",
              *kind.card_code(run_info, example)]
    after = []
    known = _known_export(params["base_model"]["name"]) if artifact == "adapter" else None
    if known:
        after = [f"The adapter was trained on `{params['base_model']['name']}`, {known[1]}. On the hub's weights it "
                 "behaves closely but not exactly as evaluated; for the exact base, export it the same way and "
                 "load that folder instead.", ""]
    return ["## How to use it", "", intro, "", "```python", *lines, "```", "", *after]


def _training(run_info: dict) -> list[str]:
    task, params, result = run_info["task"], run_info["params"], run_info.get("result", {})
    settings = {f"tasks.{task['name']}.train": task["train"],
                **{k: params[k] for k in ("lora", "quantization", "train") if k in params}}
    lines = ["## Training", "", "```yaml", yaml.safe_dump(settings, sort_keys=False, allow_unicode=True).strip(), "```", ""]
    if "steps" in result:
        lines += [training_paragraph(result), ""]
    return lines


def _provenance(run_info: dict) -> list[str]:
    name = run_info.get("base_model", {}).get("name", run_info["params"]["base_model"]["name"])
    known = _known_export(name)
    return ["## Provenance", "", *provenance_lines(run_info, f"`{name}`" + (f" ({known[0]}, {known[1]})" if known else "")),
            ""]


def _limits(run_info: dict, about: CardParams) -> list[str]:
    total = run_info.get("result", {}).get("total_parameters")
    lines = ["## Intended use and limits", "", *kinds.get(run_info["task"]["kind"]).card_limits(run_info),
             *(f"- {limit}" for limit in about.limits)]
    if total is not None and total < 1e9:
        lines += [f"- A small model ({total / 1e6:,.0f}M parameters): it knows little beyond its training data and "
                  "makes mistakes a larger model would not."]
    lines += ["- Evaluated on one held-out test split of the same data as its training: expect lower scores on "
              "text that looks different.", ""]
    return lines


def _facts(facts: dict, depth: int = 0) -> list[str]:
    """Nested facts (e.g. the export stage's figures) as a nested Markdown list."""
    lines = []
    for key, value in facts.items():
        if isinstance(value, dict) and value:  # keys as metrics/export.json spells them
            lines += [f"{'  ' * depth}- {key}:", *_facts(value, depth + 1)]
        else:
            lines.append(f"{'  ' * depth}- {key}: {'none' if value in ({}, [], None) else value}")
    return lines


def model_card(run_info: dict, metrics: dict | None, artifact: str, about: CardParams | None = None,
               extra: dict | None = None) -> str:
    """README.md text for a trained `artifact` (adapter, merged or gguf): metadata, use, metrics, provenance, limits.

    `run_info` is the adapter's run.json, `metrics` metrics/eval.json (None if not evaluated), `about` the task's
    card params (its data, an example input, its warnings), `extra` more facts to list under Export, nested dicts
    as nested lists (e.g. the export stage's merge and GGUF figures).
    """
    for key in ("task", "params"):
        if key not in run_info:
            raise PipelineError(f"run.json has no '{key}'; point at a folder written by train_qlora (`dvc repro train_qlora`)")
    about = about or NO_CARD
    name = run_info["params"]["base_model"]["name"]
    hub_id = base_hub_id(name)
    base_text = f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else f"`{name}` (a local folder)"
    body = [*_summary(run_info, artifact, base_text, about), *kinds.get(run_info["task"]["kind"]).card_what_it_does(run_info),
            *_evaluation(run_info, metrics), *_loading_code(run_info, artifact, about.example),
            *_training(run_info), *_provenance(run_info)]
    if extra:
        body += ["## Export", "", *_facts(extra), ""]
    body += _limits(run_info, about)
    return str(ModelCard(f"---\n{_metadata(run_info, artifact).to_yaml()}\n---\n\n" + "\n".join(body)))


def write_card(folder: str | Path, text: str) -> Path:
    """Write `text` as the folder's README.md, atomically."""
    path = Path(folder) / "README.md"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
