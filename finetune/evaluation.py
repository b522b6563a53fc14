"""Evaluate base and fine-tuned models side by side, plus the classic baseline, on the test split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finetune import baseline, scoring
from finetune.errors import PipelineError
from finetune.metrics import classification_metrics
from finetune.params import BaselineParams, EvaluateParams, PromptParams
from finetune.prompts import render_prompt

METHODS = ("label_scoring", "generation")


def classify(model, tokenizer, texts: list[str], labels: list[str], prompt: PromptParams,
             params: EvaluateParams, name: str) -> list[str]:
    """Predict a label for each text with `params.method`."""
    prompts = [render_prompt(prompt.template, t) for t in texts]
    if params.method == "label_scoring":
        scores = scoring.label_scores(model, tokenizer, prompts, labels, prompt.answer_prefix,
                                      params.batch_size, desc=f"{name}: scoring labels")
        return scoring.predict_by_scoring(scores, labels)
    if params.method == "generation":
        answers = scoring.generate_answers(model, tokenizer, prompts, params.batch_size, params.max_new_tokens,
                                           desc=f"{name}: generating")
        return scoring.match_labels(answers, labels)
    raise PipelineError(f"params.yaml: evaluate.method is '{params.method}'; use one of {', '.join(METHODS)}")


def summarise(actual: list[str], predicted: list[str], labels: list[str]) -> dict:
    """Headline metrics and per-class detail for one model's predictions."""
    metrics = classification_metrics(actual, predicted, labels)
    metrics["no_label_rate"] = round(float(np.mean([p == scoring.NO_LABEL for p in predicted])), 4)
    return metrics


def evaluate_all(peft_model, tokenizer, train: pd.DataFrame, test: pd.DataFrame, prompt: PromptParams,
                 params: EvaluateParams, baseline_params: BaselineParams) -> tuple[dict, pd.DataFrame]:
    """Return {model: metrics} for base, finetuned and classic, and a predictions table."""
    labels = sorted(train["label"].unique())
    texts, actual = test["text"].tolist(), test["label"].tolist()
    with peft_model.disable_adapter():
        base = classify(peft_model, tokenizer, texts, labels, prompt, params, "base")
    finetuned = classify(peft_model, tokenizer, texts, labels, prompt, params, "finetuned")
    classic = baseline.fit_predict(train["text"].tolist(), train["label"].tolist(), texts, baseline_params)
    predictions = pd.DataFrame({"id": test["id"], "text": texts, "actual": actual,
                                "base": base, "finetuned": finetuned, "classic": classic})
    results = {name: summarise(actual, predictions[name].tolist(), labels) for name in ("base", "finetuned", "classic")}
    return results, predictions


def headline(results: dict) -> dict:
    """The compact metrics file `dvc metrics diff` shows: three numbers per model."""
    keys = ("accuracy", "macro_f1", "weighted_f1", "no_label_rate")
    return {name: {k: m[k] for k in keys} for name, m in results.items()}
