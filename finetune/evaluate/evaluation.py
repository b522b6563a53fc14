"""Evaluate base and fine-tuned models side by side on the test split (plus the classic baseline for labels)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finetune.errors import PipelineError
from finetune.evaluate import baseline, scoring
from finetune.evaluate.generation import generate, perplexity
from finetune.evaluate.metrics import classification_metrics, generation_metrics, rouge_l_per_answer
from finetune.model.methods import models_side_by_side
from finetune.param_schemas import BaselineParams, Task
from finetune.text.chat import conversation_prompt_ids, encode_conversation, last_response_only
from finetune.text.prompts import render_prompt

METHODS = ("label_scoring", "generation")
MODELS = ("base", "finetuned")
HEADLINE = {
    "classification": ("accuracy", "macro_f1", "weighted_f1", "no_label_rate"),
    "generation": ("bleu", "rouge_l", "perplexity", "distinct_1", "distinct_2", "repeated_sentence_rate"),
}


def classify(model, tokenizer, texts: list[str], labels: list[str], task: Task, batch_size: int, name: str,
             memory_gib: float = scoring.DEFAULT_MEMORY_GIB) -> list[str]:
    """Predict a label for each text with the task's evaluate.method."""
    prompt, params = task.prompt, task.evaluate
    prompts = [render_prompt(prompt.template, t) for t in texts]
    if params.method == "label_scoring":
        scores = scoring.label_scores(model, tokenizer, prompts, labels, prompt.answer_prefix,
                                      batch_size, desc=f"{name}: scoring labels", memory_gib=memory_gib)
        return scoring.predict_by_scoring(scores, labels)
    if params.method == "generation":
        answers = scoring.generate_answers(model, tokenizer, prompts, batch_size, params.max_new_tokens,
                                           desc=f"{name}: generating")
        return scoring.match_labels(answers, labels)
    raise PipelineError(f"params.yaml: tasks.{task.name}.evaluate.method is '{params.method}'; "
                        f"use one of {', '.join(METHODS)}")


def summarise(actual: list[str], predicted: list[str], labels: list[str]) -> dict:
    """Headline metrics and per-class detail for one model's predictions."""
    metrics = classification_metrics(actual, predicted, labels)
    metrics["no_label_rate"] = round(float(np.mean([p == scoring.NO_LABEL for p in predicted])), 4)
    return metrics


def evaluate_classification(trained_folder, load_base, tokenizer, train: pd.DataFrame, test: pd.DataFrame, task: Task,
                            batch_size: int, baseline_params: BaselineParams,
                            memory_gib: float = scoring.DEFAULT_MEMORY_GIB) -> tuple[dict, dict, pd.DataFrame]:
    """Return {model: metrics} for base, finetuned and classic, per-class details and a predictions table.

    `trained_folder` holds an adapter for the base `load_base()` gives, or a whole model."""
    labels = sorted(train["label"].unique())
    texts, actual = test["text"].tolist(), test["label"].tolist()
    predicted = {}
    for name, model in models_side_by_side(trained_folder, load_base):
        predicted[name] = classify(model, tokenizer, texts, labels, task, batch_size, name, memory_gib)
        del model  # a whole base model is freed before the fine-tuned one loads
    predicted["classic"] = baseline.fit_predict(train["text"].tolist(), train["label"].tolist(), texts, baseline_params)
    predictions = pd.DataFrame({"id": test["id"], "text": texts, "actual": actual, **predicted})
    results = {name: summarise(actual, predictions[name].tolist(), labels) for name in (*MODELS, "classic")}
    return results, {"per_class": {name: m.pop("per_class") for name, m in results.items()}}, predictions


def evaluate_generation(trained_folder, load_base, tokenizer, test: list[dict], task: Task,
                        batch_size: int) -> tuple[dict, dict, pd.DataFrame]:
    """Both models answer every test prompt and every probe; text metrics and the perplexity of the references.

    `trained_folder` holds an adapter for the base `load_base()` gives, or a whole model."""
    prompt, params, max_length = task.prompt, task.evaluate, task.train.max_length
    encoded = [last_response_only(encode_conversation(tokenizer, row["messages"], prompt.system, prompt.chat_template,
                                                      max_length)) for row in test]
    # Prompts are cut to max_length on their own: a long reference must not crowd its prompt out.
    conversations = [row["messages"][:-1] for row in test] + [[{"role": "user", "content": p}] for p in params.probes]
    prompts = [conversation_prompt_ids(tokenizer, c, prompt.system, prompt.chat_template, max_length) for c in conversations]
    references = [row["messages"][-1]["content"] for row in test]
    results, answers = {}, {}
    for name, model in models_side_by_side(trained_folder, load_base):
        answers[name] = generate(model, tokenizer, prompts, batch_size, params.max_new_tokens,
                                 desc=f"{name}: generating", no_repeat_ngram_size=params.no_repeat_ngram_size)
        ppl = perplexity(model, tokenizer, encoded, batch_size, desc=f"{name}: perplexity")
        del model  # a whole base model is freed before the fine-tuned one loads
        results[name] = {**generation_metrics(answers[name][: len(test)], references), "perplexity": round(ppl, 4)}
    predictions = pd.DataFrame({
        "id": [row["id"] for row in test],
        "prompt": [next(m["content"] for m in reversed(row["messages"][:-1]) if m["role"] == "user") for row in test],
        "reference": references,
        **{name: answers[name][: len(test)] for name in MODELS},
        **{f"{name}_rouge_l": rouge_l_per_answer(answers[name][: len(test)], references) for name in MODELS},
    })
    probe_answers = [{"prompt": p, **{name: answers[name][len(test) + i] for name in MODELS}}
                     for i, p in enumerate(params.probes)]
    return results, {"metrics": results, "probes": probe_answers}, predictions


def headline(results: dict, kind: str) -> dict:
    """The compact metrics file `dvc metrics diff` shows: a few numbers per model."""
    return {name: {k: m[k] for k in HEADLINE[kind]} for name, m in results.items()}


def confusion_rows(predictions: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Actual vs predicted label per model, the data of the confusion-matrix plots (no rows for generation)."""
    if kind == "generation":
        return pd.DataFrame(columns=["actual", *MODELS])
    return predictions[["actual", *MODELS]]
