"""Every task format through the real stages: prepare -> split -> train_qlora (tiny) -> evaluate, on fixture files."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from finetune.data import sources
from finetune.files import read_jsonl
from tests.conftest import ROOT, run_stages, tiny_falcon
from tests.data.test_examples import assert_one_line_error, run_prepare

FIXTURES = ROOT / "tests" / "fixtures"
# task -> (fixture file, tiny architecture, overrides of the task's data and prompt)
CASES = {
    "bigbasket": ("bigbasket.csv", "llama", {}),
    "chatbot": ("chatbot.csv", "llama", {}),
    "persona_chat": ("personachat.parquet", "llama", {}),
    "guanaco": ("guanaco.jsonl", "falcon", {"prompt": {"chat_template": "plain"}}),  # Falcon's plain format
    "chitchat": ("chitchat.json", "llama", {}),  # the chitchat-dataset layout; the embedded corpus: test_pipeline
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tokenizer, tiny_llama_dir):
    """Tiny Llama and Falcon folders over SmolLM2's tokenizer (which has a chat template)."""
    root = tmp_path_factory.mktemp("models")
    (root / "llama").symlink_to(tiny_llama_dir)
    tiny_falcon(len(tokenizer)).save_pretrained(root / "falcon")
    tokenizer.save_pretrained(root / "falcon")
    return root


def write_params(workdir, task: str, source: str | None, model_dir, overrides: dict) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["task"] = task
    entry = params["tasks"][task]
    if source is not None:
        entry["data"]["source"] = source
    entry["split"].update(max_train=16, max_validation=4, max_test=6, validation_fraction=0.1, test_fraction=0.2)
    entry["train"].update(batch_size=4, max_length=96)
    if entry["kind"] == "generation":
        entry["evaluate"].update(max_new_tokens=4, probes=entry["evaluate"]["probes"][:1])
    for part, values in overrides.items():
        entry[part].update(values)
    params["base_model"]["name"] = str(model_dir)
    params["evaluate"]["batch_size"] = 4
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.parametrize("task", list(CASES))
def test_each_format_runs_prepare_split_train_evaluate(task, tmp_path, monkeypatch, tiny_models):
    fixture, arch, overrides = CASES[task]
    source = None
    if fixture is not None:
        (tmp_path / "data" / "raw").mkdir(parents=True)
        shutil.copy(FIXTURES / fixture, tmp_path / "data" / "raw" / fixture)
        source = f"data/raw/{fixture}"
    write_params(tmp_path, task, source, tiny_models / arch, overrides)
    monkeypatch.chdir(tmp_path)

    run_stages(monkeypatch, "prepare", "split", "train_qlora", "evaluate")

    examples = read_jsonl("data/examples.jsonl")
    evaluation = json.loads((tmp_path / "metrics/eval.json").read_text())
    predictions = pd.read_csv("metrics/predictions.csv", keep_default_na=False)
    assert json.loads((tmp_path / "metrics/train.json").read_text())["steps"] >= 1
    if task == "bigbasket":
        assert {e["label"] for e in examples} == set(pd.read_csv(FIXTURES / fixture)["category"])
        assert set(evaluation) == {"base", "finetuned", "classic"}
        assert evaluation["finetuned"]["no_label_rate"] == 0.0
        assert len(pd.read_csv("metrics/confusion.csv")) == len(predictions)
    else:
        assert all(e["messages"][-1]["role"] == "assistant" for e in examples)
        assert set(evaluation) == {"base", "finetuned"}
        for metrics in evaluation.values():
            assert {"bleu", "rouge_l", "perplexity", "distinct_1", "distinct_2", "repeated_sentence_rate"} <= set(metrics)
            assert metrics["perplexity"] > 1
        assert list(predictions.columns[:5]) == ["id", "prompt", "reference", "base", "finetuned"]
        probes = json.loads((tmp_path / "metrics/details.json").read_text())["probes"]
        assert len(probes) == 1 and set(probes[0]) == {"prompt", "base", "finetuned"}
        assert pd.read_csv("metrics/confusion.csv").empty
    sizes = json.loads((tmp_path / "metrics/split.json").read_text())
    assert len(predictions) == sizes["test"]


def test_persona_chat_keeps_a_conversation_in_one_split(tmp_path, monkeypatch, tiny_models):
    (tmp_path / "data" / "raw").mkdir(parents=True)
    shutil.copy(FIXTURES / "personachat.parquet", tmp_path / "data" / "raw")
    write_params(tmp_path, "persona_chat", "data/raw/personachat.parquet", tiny_models / "llama", {})
    monkeypatch.chdir(tmp_path)
    run_stages(monkeypatch, "prepare", "split")
    groups = {name: {r["group"] for r in read_jsonl(f"data/split/{name}.jsonl")} for name in ("train", "validation", "test")}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["validation"]
    first = read_jsonl("data/examples.jsonl")[0]["messages"]
    assert first[0]["role"] == "system" and "golden retriever" in first[0]["content"]


def test_hub_dataset_goes_through_datasets(monkeypatch):
    import datasets

    frame = pd.read_json(FIXTURES / "guanaco.jsonl", lines=True)
    calls = []

    def fake_load(dataset_id, split):
        calls.append((dataset_id, split))
        return datasets.Dataset.from_pandas(frame)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    table, origin = sources.load_source("hub:timdettmers/openassistant-guanaco")
    assert calls == [("timdettmers/openassistant-guanaco", "train")]
    assert origin == "hub:timdettmers/openassistant-guanaco" and table["text"].tolist() == frame["text"].tolist()


def test_hub_dataset_offline_is_a_one_line_error(tmp_path):
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache: nothing to fall back on
    proc = run_prepare(tmp_path, "hub:timdettmers/openassistant-guanaco", task="guanaco", env=offline)
    assert_one_line_error(proc, tmp_path, "hub:timdettmers/openassistant-guanaco", "cannot load", "data/raw")
