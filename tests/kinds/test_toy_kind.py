"""Adding a kind of task is adding one module: a toy kind, written here in one file, registered, and run through the
real stages prepare -> split -> train_qlora -> evaluate -> report on a tiny model, with no other file changed.

The toy kind, `echo`, teaches the model to repeat a word after `Say: `; it is judged by exact match."""

from __future__ import annotations

import json
from typing import Literal

import pandas as pd
import pytest
import yaml

from finetune import kinds, param_schemas
from finetune.param_schemas import Count, Section, TaskEntry
from finetune.tables import metrics_table, table
from finetune.text.prompts import answer_ids, encode_example, render_prompt
from tests.conftest import ROOT, run_stages


class EchoPrompt(Section):
    template: str


class EchoEvaluate(Section):
    max_new_tokens: Count


class EchoTask(TaskEntry):
    kind: Literal["echo"]
    prompt: EchoPrompt
    evaluate: EchoEvaluate


class Echo(kinds.TaskKind):
    name = "echo"
    entry = EchoTask
    hub_tag = "text-generation"
    models = ("base", "finetuned")
    metrics = (("exact_match", "exact match"),)
    metrics_note = "Share of test words repeated exactly."
    predict_fields = ("answer",)

    def examples(self, table, origin, data):
        words = sorted({str(w).strip() for w in table[data.input_field] if str(w).strip()})
        return pd.DataFrame({"id": [str(i) for i in range(len(words))], "text": words}), {"examples": len(words)}

    def split(self, examples, split, caps):
        n_test = max(1, int(len(examples) * split.test_fraction))
        return {"train": examples[n_test:], "validation": examples[:0], "test": examples[:n_test]}, {}

    def encode(self, tokenizer, rows, task, labels=None):
        return [encode_example(tokenizer, render_prompt(task.prompt.template, row["text"]),
                               answer_ids(tokenizer, " ", row["text"]), task.train.max_length) for row in rows]

    def evaluate(self, trained_folder, load_base, tokenizer, train_rows, test_rows, task, batch_size, evaluate,
                 baseline, clock=None):
        from finetune.evaluate.scoring import generate_answers
        from finetune.model.methods import models_side_by_side

        prompts = [render_prompt(task.prompt.template, row["text"]) for row in test_rows]
        answers = {name: generate_answers(model, tokenizer, prompts, batch_size, task.evaluate.max_new_tokens)
                   for name, model in models_side_by_side(trained_folder, load_base)}
        words = [row["text"] for row in test_rows]
        results = {name: {"exact_match": sum(a.strip() == w for a, w in zip(got, words)) / len(words)}
                   for name, got in answers.items()}
        return results, {"answers": answers}, pd.DataFrame({"id": [r["id"] for r in test_rows], "word": words,
                                                            **answers})

    def report_sections(self, evaluation, details, predictions, names, image_dir, samples):
        rows = [[r.word, r.base, r.finetuned] for r in predictions.head(samples).itertuples()]
        return ["## Test results", "", metrics_table(evaluation, self.metrics, names), "", self.metrics_note, "",
                "## Answers", "", table(["word", "base", "fine-tuned"], rows), ""]


@pytest.fixture
def echo_kind(monkeypatch):
    """The toy kind registered for one test, and taken out after it."""
    monkeypatch.setattr(kinds, "_KINDS", dict(kinds._KINDS))
    monkeypatch.setattr(param_schemas, "TASK_CLASSES", dict(param_schemas.TASK_CLASSES))
    kinds.register(Echo())
    yield
    param_schemas.params_file.cache_clear()


def test_a_kind_written_in_one_file_runs_through_every_stage(echo_kind, tmp_path, monkeypatch, tiny_llama_dir):
    (tmp_path / "data/raw").mkdir(parents=True)
    pd.DataFrame({"word": ["apple", "river", "candle", "garden", "pencil", "window", "silver", "orange"]}).to_csv(
        tmp_path / "data/raw/words.csv", index=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["task"] = "echo_words"
    params["tasks"]["echo_words"] = {
        "kind": "echo",
        "data": {"source": "data/raw/words.csv", "format": "table", "input_field": "word", "target_field": "",
                 "drop_labels": [], "turns": 0, "encoding": "utf-8", "keys": {}, "roles": {}},
        "split": {"seed": 0, "validation_fraction": 0.0, "test_fraction": 0.25, "max_train": "all",
                  "max_validation": "all", "max_test": "all"},
        "prompt": {"template": "Say: {text}\n"},
        "train": {"epochs": 1, "batch_size": 2, "learning_rate": 0.001, "max_length": 32},
        "evaluate": {"max_new_tokens": 3},
        "card": {"description": "words to repeat", "example": "apple", "limits": []},
    }
    params["base_model"]["name"] = str(tiny_llama_dir)
    params["evaluate"]["batch_size"] = 4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)

    run_stages(monkeypatch, "prepare", "split", "train_qlora", "evaluate", "report")

    assert json.loads((tmp_path / "metrics/split.json").read_text()) == {"train": 6, "validation": 0, "test": 2}
    assert json.loads((tmp_path / "models/adapter/run.json").read_text())["task"]["kind"] == "echo"
    evaluation = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert set(evaluation) == {"base", "finetuned"} and set(evaluation["base"]) == {"exact_match"}
    assert pd.read_csv(tmp_path / "metrics/confusion.csv").empty  # a kind without classes has no confusion rows
    text = (tmp_path / "metrics/report.md").read_text()
    assert "| model | exact match |" in text and "| Fine-tuned (QLoRA) |" in text and "## Answers" in text
