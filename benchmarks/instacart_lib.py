"""The pipeline's library and the full Instacart split, as the SmolLM2 benchmarks call them.

Every call into `finetune` goes through a `lib_*` function here, so a change of the library's
signatures is adapted in one place. Also the two steps that make a benchmark's inputs:
`prepare` (here: the split stage's split with every cap 'all', and the classic baseline on it)
and `export` (the GPU machine: the SmolLM2 GGUF as a Hugging Face folder); and what is measured
on the split's labels: accuracy, the seeds' pipeline loop, the loss against the plain path's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import torch

DATA = Path(".bench/instacart_all")
SEEDS_LENGTH = 512  # the seed notebooks padded every example to this many tokens

# ---- The library, called only through these functions (its signatures may change: adapt here only) ----

@functools.cache
def lib_task():
    """The instacart task entry of params.yaml (the embedded default), read once: parsing the YAML for each
    prompt (lib_prompt) was what capped label scoring's speed in this benchmark."""
    from finetune import params

    return params.read_task(name="instacart")


def lib_full_split(out: Path) -> dict[str, int]:
    """The prepare + split stages' examples and split with params.yaml, every cap 'all'."""
    from finetune import files, kinds
    from finetune.data import sources, splits

    task = lib_task()
    kind = kinds.of(task)
    table, origin = sources.load_source(task.data.source)
    rows, _ = kind.examples(table, origin, task.data)
    parts, _ = kind.split(rows, task.split, {name: None for name in splits.SPLITS})
    for name, frame in parts.items():
        files.write_jsonl(out / f"{name}.jsonl", frame.to_dict("records"))
    return {name: len(frame) for name, frame in parts.items()}


def lib_classic(train: list[dict], test: list[dict]) -> list[str]:
    from finetune import params
    from finetune.evaluate import baseline

    return baseline.fit_predict([r["text"] for r in train], [r["label"] for r in train],
                                [r["text"] for r in test], params.read("baseline"))


def lib_metrics(actual: list[str], predicted: list[str], labels: list[str]) -> dict:
    from finetune.evaluate.metrics import classification_metrics

    m = classification_metrics(actual, predicted, labels)
    return {k: m[k] for k in ("accuracy", "macro_f1", "weighted_f1")}


def lib_prompt(text: str) -> str:
    from finetune.text import prompts

    return prompts.render_prompt(lib_task().prompt.template, text)


def lib_tokenizer(model_dir: str):
    from finetune.model import base_model

    return base_model.load_tokenizer(model_dir, "main")


def lib_load(model_dir: str, adapter: str | None = None, dense: bool | None = None,
             head_labels: list[str] | None = None):
    """The 4-bit base model as train_qlora loads it (dense-copied later, when training starts), or as evaluate
    loads it (`dense`, the default with an adapter: dense-copied when small), with a trained adapter.
    `head_labels`: with a new classification head for these labels (objective head)."""
    from finetune import params
    from finetune.model import methods
    from finetune.model.head import head_config

    dense = adapter is not None if dense is None else dense
    head = head_config(head_labels, lib_tokenizer(model_dir)) if head_labels else None
    quant = params.read("quantization")
    load = lambda: methods.load_base(model_dir, "main", "qlora", quant, dense=dense, head=head)  # noqa: E731
    return methods.load_trained(adapter, load) if adapter else load()


def lib_encode(tokenizer, rows: list[dict], objective: str = "label_scoring",
               labels: list[str] | None = None) -> list[dict]:
    """The task's examples as train_qlora encodes them for `objective` (head: numbered by `labels`, the train
    split's)."""
    import dataclasses

    from finetune import kinds, params

    task = lib_task()
    task = dataclasses.replace(task, train=params.replace(task.train, objective=objective))
    return kinds.of(task).encode(tokenizer, rows, task, labels)


def lib_train(model, tokenizer, train: list[dict], validation: list[dict], overrides: dict, work: Path,
              callbacks: tuple = ()):
    """train_model with params.yaml's train and lora sections, some train keys overridden."""
    from finetune import params
    from finetune.train import training

    task_train, shared = lib_task().train, params.read("train")
    task_fields = set(type(task_train).model_fields)
    task_train = params.replace(task_train, **{k: v for k, v in overrides.items() if k in task_fields})
    shared = params.replace(shared, **{k: v for k, v in overrides.items() if k not in task_fields})
    trained, result, timings = training.train_model(model, tokenizer, train, validation, task_train, shared,
                                                    params.read("lora"), work, callbacks=list(callbacks))
    training.save_trained(trained, tokenizer, work / "adapter", {"benchmark": True})
    return (trained.model, {**dataclasses.asdict(result), **dataclasses.asdict(timings)},
            {**params.as_dict(shared), **params.as_dict(task_train)})


def lib_collate(tokenizer, features: list[dict]) -> dict:
    from finetune.train.batching import AnswerOnlyCollator

    return AnswerOnlyCollator(tokenizer.pad_token_id)(features)


def lib_label_predict(model, tokenizer, texts: list[str], labels: list[str]) -> list[str]:
    from finetune import params
    from finetune.evaluate import scoring

    p, e = lib_task().prompt, params.read("evaluate")
    batch = params.evaluation_batch_size(e.batch_size, on_gpu=torch.cuda.is_available())
    scores = scoring.label_scores(model, tokenizer, [lib_prompt(t) for t in texts], labels, p.answer_prefix, batch)
    return scoring.predict_by_scoring(scores, labels)


def lib_head_predict(model, tokenizer, texts: list[str], labels: list[str]) -> list[str]:
    """The evaluate stage's answers for objective head: the argmax of the head's label scores."""
    from finetune import params
    from finetune.kinds.classification.head import Head

    task, e = lib_task(), params.read("evaluate")
    batch = params.evaluation_batch_size(e.batch_size, on_gpu=torch.cuda.is_available())
    scores = Head().scores(model, tokenizer, texts, labels, task.prompt, task.train.max_length, batch, e.memory_gib)
    return [labels[i] for i in scores.argmax(axis=1)]


def lib_match(answers: list[str], labels: list[str]) -> list[str]:
    from finetune.evaluate import scoring

    return scoring.match_labels(answers, labels)


NO_LABEL = "<no label>"  # finetune.evaluate.scoring.NO_LABEL


def read_split(name: str, limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return rows[:limit] if limit else rows


# ---- What is measured on the split's labels ----

def accuracy(actual: list[str], predicted: list[str]) -> dict:
    n = len(actual)
    return {"examples": n, "accuracy": round(sum(a == p for a, p in zip(actual, predicted)) / n, 4),
            "no_label_rate": round(sum(p == NO_LABEL for p in predicted) / n, 4)}


def pipeline_predict(model, tokenizer, texts: list[str], labels: list[str]) -> list[str]:
    """The seeds' evaluation: pipeline("text-generation"), one example at a time, greedy, exact match."""
    from transformers import pipeline

    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    kwargs = dict(max_new_tokens=8, do_sample=False, return_full_text=False, use_cache=True,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.eval()
    answers = [pipe(lib_prompt(t), **kwargs)[0]["generated_text"] for t in texts]
    return lib_match(answers, labels)


def warm_pipeline(model, tokenizer, texts, labels) -> None:
    pipeline_predict(model, tokenizer, texts[:2], labels)


@torch.no_grad()
def loss_check(model, tokenizer, encoded: list[dict], batches: int, size: int) -> dict:
    """The project's loss (left-padded per batch, answer-only logits) against the plain path on the same
    batches: every logit of the same batch, and each example right-padded to 512 (as the seeds padded)."""
    dev = next(model.parameters()).device
    model.eval()
    rows = []
    for b in range(min(batches, len(encoded) // size)):
        features = encoded[b * size:(b + 1) * size]
        fast = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in lib_collate(tokenizer, features).items()}
        width = fast["input_ids"].shape[1]
        full_labels = torch.full((len(features), width), -100, dtype=torch.long)
        for i, f in enumerate(features):
            full_labels[i, width - len(f["labels"]):] = torch.tensor(f["labels"])
        padded = torch.full((len(features), SEEDS_LENGTH), tokenizer.pad_token_id, dtype=torch.long)
        padded_mask = torch.zeros_like(padded)
        padded_labels = torch.full_like(padded, -100)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            padded[i, :n], padded_mask[i, :n], padded_labels[i, :n] = (torch.tensor(f["input_ids"]), 1,
                                                                        torch.tensor(f["labels"]))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            project = model(**fast).loss
            plain = model(input_ids=fast["input_ids"], attention_mask=fast["attention_mask"],
                          position_ids=fast["position_ids"], labels=full_labels.to(dev)).loss
            pad512 = model(input_ids=padded.to(dev), attention_mask=padded_mask.to(dev), labels=padded_labels.to(dev)).loss
        rows.append([round(float(x), 5) for x in (project, plain, pad512)])
    diff = max(max(abs(r[0] - r[1]), abs(r[0] - r[2])) for r in rows)
    return {"batches": rows, "columns": ["project", "same batch, all logits", "each padded to 512"],
            "max_abs_diff": round(diff, 5)}


# ---- The benchmark's inputs ----

def export(gguf: str, dest: str) -> None:
    """finetune.model.embedded.export_embedded, for a GGUF at any path (the library's reads the installed package)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)  # the GGUF loader marks the dense model quantized
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    elif quantizer is not None:
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def prepare() -> None:
    sizes = lib_full_split(DATA)
    data = {name: read_split(name, None) for name in ("train", "validation", "test")}
    labels = sorted({r["label"] for r in data["train"]})
    actual = [r["label"] for r in data["test"]]
    classic = {"sizes": sizes}
    for name, train in (("train", data["train"]), ("train+validation", data["train"] + data["validation"])):
        start = time.perf_counter()
        predicted = lib_classic(train, data["test"])
        classic[name] = {"train_examples": len(train), "seconds": round(time.perf_counter() - start, 1),
                         **lib_metrics(actual, predicted, labels)}
    (DATA / "classic.json").write_text(json.dumps(classic, indent=1) + "\n")
    print(json.dumps(classic, indent=1))
