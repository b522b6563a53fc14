"""Classification: a text in, one label of a closed set out (Instacart departments, BigBasket categories).

The model learns to write the label after the prompt; evaluate, export and predict score every allowed label
(label scoring, finetune/evaluate/scoring.py), so an answer is always one of the labels. A TF-IDF + logistic
regression baseline is fitted on the same split beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from finetune import kinds
from finetune.data.examples import build_examples, class_counts
from finetune.data.splits import split_examples, train_only_classes
from finetune.errors import PipelineError
from finetune.param_schemas import ClassificationTask, Task
from finetune.tables import cell, metrics_table, table
from finetune.text.prompts import answer_ids, check_room, encode_example, render_prompt

def label_texts(model, tokenizer, texts: list[str], labels: list[str], template: str, answer_prefix: str,
                batch_size: int, memory_gib: float, desc: str = "scoring labels") -> list[str]:
    """The likeliest label of each text, by label scoring after the prompt made from `template`."""
    from finetune.evaluate import scoring

    prompts = [render_prompt(template, t) for t in texts]
    scores = scoring.label_scores(model, tokenizer, prompts, labels, answer_prefix, batch_size, desc=desc,
                                  memory_gib=memory_gib)
    return scoring.predict_by_scoring(scores, labels)


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

    def encode(self, tokenizer, rows, task):
        max_length = task.train.max_length
        check_room(tokenizer, task.prompt.template, task.prompt.answer_prefix, sorted({row["label"] for row in rows}),
                   max_length, f"tasks.{task.name}.train.max_length")
        return [encode_example(tokenizer, render_prompt(task.prompt.template, row["text"]),
                               answer_ids(tokenizer, task.prompt.answer_prefix, row["label"]), max_length)
                for row in rows]

    def labels(self, train_rows):
        return sorted({row["label"] for row in train_rows})

    def evaluate(self, trained_folder, load_base, tokenizer, train_rows, test_rows, task, batch_size, evaluate,
                 baseline):
        from finetune.evaluate import baseline as classic
        from finetune.model.methods import models_side_by_side

        labels = self.labels(train_rows)
        texts, actual = [row["text"] for row in test_rows], [row["label"] for row in test_rows]
        predicted = {}
        for name, model in models_side_by_side(trained_folder, load_base):
            predicted[name] = self._classify(model, tokenizer, texts, labels, task, batch_size, name,
                                             evaluate.memory_gib)
            del model  # a whole base model is freed before the fine-tuned one loads
        predicted["classic"] = classic.fit_predict([r["text"] for r in train_rows], [r["label"] for r in train_rows],
                                                   texts, baseline)
        predictions = pd.DataFrame({"id": [row["id"] for row in test_rows], "text": texts, "actual": actual,
                                    **predicted})
        results = {name: self._summary(actual, predictions[name].tolist(), labels) for name in self.models}
        return results, {"per_class": {name: m.pop("per_class") for name, m in results.items()}}, predictions

    @staticmethod
    def _classify(model, tokenizer, texts, labels, task: Task, batch_size, name, memory_gib) -> list[str]:
        """A label for each text by the task's evaluate.method: label scoring, or greedy generation matched to one."""
        from finetune.evaluate import scoring

        prompt = task.prompt
        if task.evaluate.method == "label_scoring":
            return label_texts(model, tokenizer, texts, labels, prompt.template, prompt.answer_prefix, batch_size,
                               memory_gib, desc=f"{name}: scoring labels")
        prompts = [render_prompt(prompt.template, t) for t in texts]
        answers = scoring.generate_answers(model, tokenizer, prompts, batch_size, task.evaluate.max_new_tokens,
                                           desc=f"{name}: generating")
        return scoring.match_labels(answers, labels)

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

        answers = label_texts(model, tokenizer, [row["text"] for row in test_rows], run.labels, run.prompt.template,
                              run.prompt.answer_prefix, batch_size, memory_gib)
        metrics = classification_metrics([row["label"] for row in test_rows], answers, run.labels)
        return answers, {k: metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1")}

    def predict(self, run, model, tokenizer, texts, options, on_batch):
        from finetune.evaluate import scoring

        labels, k = run.labels, min(options["top_k"], len(run.labels))
        prompts = [render_prompt(run.prompt.template, t) for t in texts]
        scores = scoring.label_scores(model, tokenizer, prompts, labels, run.prompt.answer_prefix,
                                      options["batch_size"], memory_gib=options["memory_gib"], on_batch=on_batch)
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
        prompt = task["prompt"]
        field = task.get("data", {}).get("input_field")
        field = f" (the `{field}` field)" if field else ""
        return ["## What it does", "",
                f"It reads a prompt made from this template, with `{{text}}` replaced by the input{field}, and answers "
                f"with `answer_prefix` ({json.dumps(prompt['answer_prefix'])}) + one label + the end-of-sequence token:",
                "", "```text", prompt["template"], "```", "",
                f"Labels ({len(_labels(run_info))}): " + ", ".join(f"`{label}`" for label in _labels(run_info)), ""]

    def card_code(self, run_info, example):
        prompt = run_info["task"]["prompt"]
        return [
            "import torch",
            "",
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

    def card_gguf_command(self, run_info, example):
        # greedy, so the answer is the likeliest label's start (llama-cli does no label scoring)
        prompt = run_info["task"]["prompt"]["template"].replace("{text}", example)
        return f"llama-cli -m MODEL.gguf -p {json.dumps(prompt)} -n 8 --temp 0"

    def card_limits(self, run_info):
        return [f"- It only knows the {len(_labels(run_info))} labels listed above: any input gets one of them, even one "
                "that belongs to none. Scoring the labels, as above, always returns a listed label; free generation "
                "may not."]


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
