"""The pipeline's library and the full Instacart split, as the SmolLM2 benchmarks call them.

Every call into `finetune` goes through a `lib_*` function here, so a change of the library's
signatures is adapted in one place. Also the two steps that make a benchmark's inputs:
`prepare` (here: the split stage's split with every cap 'all', and the classic baseline on it)
and `export` (the GPU machine: the SmolLM2 GGUF as a Hugging Face folder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
from pathlib import Path

import torch

DATA = Path(".bench/instacart_all")

# ---- The library, called only through these functions (its signatures may change: adapt here only) ----

@functools.cache
def lib_task():
    """The instacart task entry of params.yaml (the embedded default), read once.

    Reading it per prompt (lib_prompt) cost ~20 ms of YAML parsing an example on the H100 machine,
    which capped label scoring at ~52 examples/s in this benchmark.
    """
    from finetune import params

    return params.read_task(name="instacart")


def lib_full_split(out: Path) -> dict[str, int]:
    """The prepare + split stages' examples and split with params.yaml, every cap 'all'."""
    from finetune import files
    from finetune.data import examples, sources, splits

    task = lib_task()
    data, split = task.data, task.split
    table, origin = sources.load_source(data.source)
    rows, _ = examples.build_examples(table, origin, data.input_field, data.target_field, data.drop_labels)
    parts = splits.split_examples(rows, split.validation_fraction, split.test_fraction,
                                  {name: None for name in splits.SPLITS}, split.seed)
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


def lib_load(model_dir: str, adapter: str | None = None, dense: bool | None = None):
    """The 4-bit base model as train_qlora loads it (dense-copied later, when training starts), or as evaluate
    loads it (`dense`, the default with an adapter: dense-copied when small), with a trained adapter."""
    from finetune import params
    from finetune.model import adapters, methods

    dense = adapter is not None if dense is None else dense
    model = methods.load_base(model_dir, "main", "qlora", params.read("quantization"), dense=dense)
    return adapters.load_adapter(model, adapter) if adapter else model


@contextlib.contextmanager
def lib_four_bit_layers(kept: bool):
    """If `kept`, a GPU keeps a small base's 4-bit layers (as before `base_model.dense_copy` held it dense there)."""
    from benchmarks.measure import restored  # measure imports this module
    from finetune.model import base_model

    with restored(base_model, "GPU_DENSE_LIMIT_GIB"):
        if kept:
            base_model.GPU_DENSE_LIMIT_GIB = 0.0
        yield


@contextlib.contextmanager
def lib_lora_inputs_cast(kept: bool):
    """If `kept`, PEFT casts each LoRA input to fp32 under autocast (as before `training.lora_inputs_uncast`)."""
    from benchmarks.measure import restored
    from finetune.train import training

    with restored(training, "lora_inputs_uncast"):
        if kept:
            training.lora_inputs_uncast = lambda model, autocast: contextlib.nullcontext()
        yield


def lib_encode(tokenizer, rows: list[dict]) -> list[dict]:
    from finetune import kinds

    task = lib_task()
    return kinds.of(task).encode(tokenizer, rows, task)


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


def lib_match(answers: list[str], labels: list[str]) -> list[str]:
    from finetune.evaluate import scoring

    return scoring.match_labels(answers, labels)


NO_LABEL = "<no label>"  # finetune.evaluate.scoring.NO_LABEL


def read_split(name: str, limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return rows[:limit] if limit else rows


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
