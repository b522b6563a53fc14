"""Classification: a text in, one label of a closed set out (Instacart departments, BigBasket categories).

What the model learns is the task's `train.objective`, a module each in this package: to write the label, every
label then scored by its likelihood (label_scoring.py), or to fill a classification head (head.py). Either way an
answer is always one of the labels. The base model is scored zero-shot by label scoring, and a TF-IDF + logistic
regression baseline is fitted on the same split beside them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from finetune import kinds
from finetune.data.examples import build_examples, class_counts
from finetune.data.splits import split_examples, train_only_classes
from finetune.errors import PipelineError
from finetune.kinds.classification.head import Head
from finetune.kinds.classification.label_scoring import LabelScoring
from finetune.kinds.classification.objective import Objective
from finetune.param_schemas import ClassificationTask
from finetune.tables import cell, metrics_table, table

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (LabelScoring(), Head())}
ZERO_SHOT = OBJECTIVES["label_scoring"]  # how the base model is scored: it has no head


def objective_of(task: dict) -> Objective:
    """The objective of a task as run.json (or params, as a dict) records it; a run from before objectives scored
    labels."""
    return OBJECTIVES[task.get("train", {}).get("objective", "label_scoring")]


class Classification(kinds.TaskKind):
    name = "classification"
    entry = ClassificationTask
    hub_tag = "text-classification"
    models = ("base", "finetuned", "classic")
    metrics = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1"),
               ("no_label_rate", "no valid label"))
    metrics_note = ("Accuracy and F1 on the held-out test split; the base model scored zero-shot with the same prompt; "
                    "'no valid label': share of answers that named no label.")
    predict_fields = ("label", "probability", "top_k")

    def examples(self, table, origin, data):
        return build_examples(table, origin, data.input_field, data.target_field, data.drop_labels)

    def class_counts(self, examples):
        return class_counts(examples)

    def split(self, examples, split, caps):
        splits = split_examples(examples, split.validation_fraction, split.test_fraction, caps, split.seed)
        train_only = train_only_classes(examples, split.validation_fraction)
        # only when there are some, so a split without such classes writes the same sizes file as before
        return splits, ({"train_only_classes": train_only} if train_only else {})

    def encode(self, tokenizer, rows, task, labels=None):
        return OBJECTIVES[task.train.objective].encode(tokenizer, rows, task, labels or self.labels(rows))

    def labels(self, train_rows):
        return sorted({row["label"] for row in train_rows})

    def model_head(self, task, labels, tokenizer):
        return objective_of(task).head(labels, tokenizer)

    def evaluate(self, trained_folder, load_base, tokenizer, train_rows, test_rows, task, batch_size, evaluate,
                 baseline, clock=None):
        from finetune.evaluate import baseline as classic

        labels = self.labels(train_rows)
        texts, actual = [row["text"] for row in test_rows], [row["label"] for row in test_rows]
        objective = OBJECTIVES[task.train.objective]
        clock = {} if clock is None else clock
        predicted, start = {}, time.perf_counter()
        for name, model in objective.side_by_side(trained_folder, load_base, labels, tokenizer):
            by = ZERO_SHOT if name == "base" else objective
            predicted[name] = by.classify(model, tokenizer, texts, labels, task, batch_size, name, evaluate.memory_gib)
            del model  # a whole base model is freed before the fine-tuned one loads
            clock[name], start = round(time.perf_counter() - start, 1), time.perf_counter()
        predicted["classic"] = classic.fit_predict([r["text"] for r in train_rows], [r["label"] for r in train_rows],
                                                   texts, baseline)
        clock["classic"] = round(time.perf_counter() - start, 1)
        predictions = pd.DataFrame({"id": [row["id"] for row in test_rows], "text": texts, "actual": actual,
                                    **predicted})
        results = {name: self._summary(actual, predictions[name].tolist(), labels) for name in self.models}
        return results, {"per_class": {name: m.pop("per_class") for name, m in results.items()}}, predictions

    @staticmethod
    def _summary(actual: list[str], predicted: list[str], labels: list[str]) -> dict:
        from finetune.evaluate import scoring
        from finetune.evaluate.metrics import classification_metrics

        metrics = classification_metrics(actual, predicted, labels)
        metrics["no_label_rate"] = round(float(np.mean([p == scoring.NO_LABEL for p in predicted])), 4)
        return metrics

    def confusion_rows(self, predictions):
        return predictions[["actual", "base", "finetuned"]]

    def test_answers(self, run, model, tokenizer, test_rows, batch_size, memory_gib, task):
        from finetune.evaluate.metrics import classification_metrics

        scores = objective_of(run.info["task"]).scores(model, tokenizer, [row["text"] for row in test_rows],
                                                        run.labels, run.prompt, run.max_length, batch_size, memory_gib)
        answers = [run.labels[i] for i in scores.argmax(axis=1)]
        metrics = classification_metrics([row["label"] for row in test_rows], answers, run.labels)
        return answers, {k: metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1")}

    def predict(self, run, model, tokenizer, texts, options, on_batch):
        from finetune.evaluate import scoring

        labels, k = run.labels, min(options["top_k"], len(run.labels))
        scores = objective_of(run.info["task"]).scores(model, tokenizer, texts, labels, run.prompt, run.max_length,
                                                        options["batch_size"], options["memory_gib"],
                                                        on_batch=on_batch)
        probabilities = scoring.label_probabilities(scores)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [{"label": labels[row[0]], "probability": round(float(p[row[0]]), 6),
                 "top_k": [{"label": labels[j], "probability": round(float(p[j]), 6)} for j in row]}
                for row, p in zip(best, probabilities)]

    def report_sections(self, evaluation, details, predictions, names, image_dir, samples):
        from finetune.evaluate.plots import plot_confusion

        plot_confusion(predictions, "finetuned", image_dir / "confusion_finetuned.png", "Fine-tuned model, test split")
        plot_confusion(predictions, "base", image_dir / "confusion_base.png", "Base model, test split")
        rel = Path(image_dir).name
        gain = evaluation["finetuned"]["accuracy"] - evaluation["base"]["accuracy"]
        per_class = details["per_class"]
        per_class_rows = [[label, row["support"], f"{per_class['base'][label]['f1']:.3f}", f"{row['f1']:.3f}",
                           f"{per_class['classic'][label]['f1']:.3f}"] for label, row in per_class["finetuned"].items()]
        return [
            "## Test results", "", metrics_table(evaluation, self.metrics, names), "", self.metrics_note, "",
            f"Fine-tuning changed test accuracy by {gain:+.3f}.", "",
            "## Confusion matrices", "",
            f"![fine-tuned confusion matrix]({rel}/confusion_finetuned.png)", "",
            f"![base confusion matrix]({rel}/confusion_base.png)", "",
            "## Per-class F1", "",
            table(["label", "support", "base F1", "fine-tuned F1", "classic F1"], per_class_rows), "",
            "## Sample predictions", "",
            "Right (fine-tuned):", "", _examples_table(_sample(predictions, True, samples)), "",
            "Wrong (fine-tuned):", "", _examples_table(_sample(predictions, False, samples)), "",
        ]

    def review_sections(self, base, old, new, images, link):
        from finetune.evaluate.plots import plot_confusions

        before = old["predictions"]
        runs = ([(f"fine-tuned at {base}", before)] if before is not None and "actual" in before else []) + [
            ("fine-tuned, this change", new["predictions"])]
        plot_confusions(runs, images / "confusion.png")
        return ["## Confusion matrices (test split)", "", f"![confusion matrices]({link}/confusion.png)", ""]

    def card_job(self, run_info):
        return f"classify text into one of {len(_labels(run_info))} labels"

    def card_what_it_does(self, run_info):
        task = run_info["task"]
        field = task.get("data", {}).get("input_field")
        field = f" (the `{field}` field)" if field else ""
        return ["## What it does", "", *objective_of(task).card_what_it_does(task["prompt"], field),
                f"Labels ({len(_labels(run_info))}): " + ", ".join(f"`{label}`" for label in _labels(run_info)), ""]

    def card_auto_class(self, run_info):
        return objective_of(run_info["task"]).auto_class

    def card_head_arguments(self, run_info):
        if not objective_of(run_info["task"]).has_head:
            return None
        return ([f"LABELS = {json.dumps(_labels(run_info), ensure_ascii=False)}"],
                "num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), pad_token_id=tokenizer.pad_token_id")

    def card_code(self, run_info, example):
        _labels(run_info)
        return objective_of(run_info["task"]).card_code(run_info, example)

    def card_gguf_command(self, run_info, example):
        # greedy, so the answer is the likeliest label's start (llama-cli does no label scoring)
        prompt = run_info["task"]["prompt"]["template"].replace("{text}", example)
        return f"llama-cli -m MODEL.gguf -p {json.dumps(prompt)} -n 8 --temp 0"

    def card_limits(self, run_info):
        line = (f"- It only knows the {len(_labels(run_info))} labels listed above: any input gets one of them, even one "
                "that belongs to none.")
        if not objective_of(run_info["task"]).has_head:
            line += " Scoring the labels, as above, always returns a listed label; free generation may not."
        return [line]


def _labels(run_info: dict) -> list[str]:
    labels = run_info.get("labels")
    if not labels:
        raise PipelineError("run.json records no label set; retrain the adapter with this version (`dvc repro train_qlora`)")
    return labels


def _sample(predictions: pd.DataFrame, correct: bool, n: int) -> pd.DataFrame:
    """`n` right or wrong fine-tuned predictions, chosen reproducibly."""
    rows = predictions[(predictions["actual"] == predictions["finetuned"]) == correct]
    return rows.sample(n=min(n, len(rows)), random_state=0) if len(rows) else rows


def _examples_table(rows: pd.DataFrame) -> str:
    return table(["text", "actual", "fine-tuned", "base", "classic"],
                 [[cell(r.text), r.actual, r.finetuned, r.base, r.classic] for r in rows.itertuples()])


kinds.register(Classification())
