"""The classification head (tasks.<task>.train.objective: head) on tiny Llama and Falcon models, by every method:
trained, saved, reloaded, scored as evaluate and predict score, merged, released."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from finetune import kinds, params
from finetune.deliver import gguf
from finetune.deliver.export import release
from finetune.deliver.merge import merged_model, merged_run_info, save_merged
from finetune.deliver.trained import load_trained
from finetune.errors import PipelineError
from finetune.files import write_json, write_jsonl
from finetune.kinds.classification import objective_of
from finetune.model import methods
from finetune.model.head import start_head
from finetune.train.training import save_trained, train_model
from tests.conftest import ROOT, lora_params, tiny_falcon, tiny_llama
from tests.deliver.conftest import CLASSIFY

LABELS = ["frozen", "produce", "snacks"]
ROWS = [{"id": str(i), "text": f"item {i} kind {i % 3}", "label": LABELS[i % 3]} for i in range(12)]
TEXTS = [row["text"] for row in ROWS[:6]]
HEAD_TASK = {**CLASSIFY, "train": {**CLASSIFY["train"], "objective": "head"}}


def head_task():
    task = params.read_task(ROOT / "params.yaml", name="instacart")
    return dataclasses.replace(task, train=params.replace(task.train, objective="head", batch_size=4,
                                                          learning_rate=5e-3))


def train_head(folder, tokenizer, arch: str, method: str, lora_changes: dict | None = None):
    """A tiny base under folder/base, a head trained on it by `method` (3 steps), saved under folder/trained as
    train_qlora saves it; returns (the trained model in memory, the saved folder)."""
    base = folder / "base"
    (tiny_llama if arch == "llama" else tiny_falcon)(len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    task, kind = head_task(), kinds.get("classification")
    examples = kind.encode(tokenizer, ROWS, task, LABELS)
    train = params.replace(params.read("train", ROOT / "params.yaml"), method=method, logging_steps=1,
                           checkpoint_minutes=0)
    quant = params.read("quantization", ROOT / "params.yaml")
    model = methods.load_base(str(base), "main", method, quant, dense=False,
                              head=kind.model_head(HEAD_TASK, LABELS, tokenizer))
    trained, result, _ = train_model(model, tokenizer, examples, examples[:4], task.train, train,
                                     lora_params(r=4, alpha=8, **(lora_changes or {})), folder / "work", callbacks=[],
                                     base_folder=str(base))
    assert result.steps == 3 and np.isfinite(result.final_loss) and result.validation_loss is not None
    run_info = {"task": HEAD_TASK, "labels": LABELS,
                "params": {"base_model": {"name": str(base), "revision": "main"},
                           "quantization": {"quant_type": quant.quant_type, "double_quant": quant.double_quant},
                           "train": {"method": method}, "lora": {"r": 4, "alpha": 8}},
                "base_model": {"name": str(base)}, "data_sha256": "0" * 64, "libraries": {}, "result": {}}
    save_trained(trained, tokenizer, folder / "trained", run_info)
    return trained.model, folder / "trained"


def head_scores(model, tokenizer) -> np.ndarray:
    task = head_task()
    return objective_of(HEAD_TASK).scores(model, tokenizer, TEXTS, LABELS, task.prompt, task.train.max_length,
                                          batch_size=4, memory_gib=1.0)


@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
@pytest.mark.parametrize("arch", ["llama", "falcon"])
def test_each_method_trains_saves_reloads_scores_and_merges_a_head(arch, method, tmp_path, tokenizer):
    in_memory, folder = train_head(tmp_path, tokenizer, arch, method)
    trained_scores = head_scores(in_memory, tokenizer)

    run, reloaded, _ = load_trained(folder)  # as evaluate, export and predict load it
    assert type(reloaded.get_base_model() if method != "full" else reloaded).__name__.endswith(
        "ForSequenceClassification")
    np.testing.assert_allclose(head_scores(reloaded, tokenizer), trained_scores, atol=1e-4)
    assert np.allclose(np.exp(trained_scores).sum(axis=1), 1.0)

    torch.manual_seed(params.read("train", ROOT / "params.yaml").seed)  # the head as training started it
    untrained = methods.load_base(str(tmp_path / "base"), "main", method, params.read("quantization", ROOT / "params.yaml"),
                                  head=run.head(tokenizer))
    start_head(untrained)
    assert not np.allclose(head_scores(untrained, tokenizer), trained_scores, atol=1e-3), "training changed nothing"

    if method == "full":  # a whole model already: it loads as what it is, without this project
        merged, merged_folder = reloaded, folder
    else:
        merged = merged_model(run, "dequantized")
        np.testing.assert_allclose(head_scores(merged, tokenizer), trained_scores, atol=1e-4)
        merged_folder = save_merged(merged, tokenizer, tmp_path / "merged", merged_run_info(run, "dequantized", merged))
    plain = AutoModelForSequenceClassification.from_pretrained(merged_folder, dtype=torch.float32).eval()
    assert [plain.config.id2label[i] for i in range(3)] == LABELS
    np.testing.assert_allclose(head_scores(plain, tokenizer), trained_scores, atol=1e-4)
    with pytest.raises(PipelineError, match="classification head"):
        gguf.convert(merged_folder, tmp_path / "gguf", ("f16",))


@pytest.mark.parametrize("method, changes", [("qlora", {"use_dora": True}), ("qlora", {"use_rslora": True}),
                                             ("lora", {"init": "pissa"}), ("qlora", {"init": "loftq"}),
                                             ("qlora", {"plus_lr_ratio": 16.0})],
                         ids=["dora", "rslora", "pissa", "loftq", "lora_plus"])
def test_each_peft_variant_trains_a_head_that_reloads_and_scores_the_same(method, changes, tmp_path, tokenizer):
    in_memory, folder = train_head(tmp_path, tokenizer, "llama", method, changes)
    _, reloaded, _ = load_trained(folder)
    np.testing.assert_allclose(head_scores(reloaded, tokenizer), head_scores(in_memory, tokenizer), atol=1e-4)


def test_predict_gives_the_heads_softmax_and_top_k(tmp_path, tokenizer):
    _, folder = train_head(tmp_path, tokenizer, "llama", "qlora")
    run, model, _ = load_trained(folder)
    rows = run.kind.predict(run, model, tokenizer, TEXTS, {"top_k": 2, "batch_size": 4, "memory_gib": 1.0}, None)
    for text, row in zip(TEXTS, rows):
        ids = tokenizer(HEAD_TASK["prompt"]["template"].replace("{text}", text), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            probabilities = model(input_ids=ids).logits[0].float().softmax(-1)
        best = int(probabilities.argmax())
        assert row["label"] == LABELS[best] and row["probability"] == pytest.approx(float(probabilities[best]), abs=1e-5)
        assert [k["label"] for k in row["top_k"]] == [LABELS[i] for i in probabilities.argsort(descending=True)[:2]]


def test_a_head_release_has_the_merged_model_and_says_why_there_is_no_gguf(tmp_path, tokenizer, capsys):
    _, folder = train_head(tmp_path, tokenizer, "llama", "qlora")
    run, model, _ = load_trained(folder)
    test = ROWS[:6]
    scores = head_scores(model, tokenizer)
    write_jsonl(tmp_path / "split/test.jsonl", test)
    pd.DataFrame({"id": [r["id"] for r in test], "finetuned": [LABELS[i] for i in scores.argmax(axis=1)]}).to_csv(
        tmp_path / "predictions.csv", index=False)
    write_json(tmp_path / "eval.json", {"finetuned": {"accuracy": 0.5, "macro_f1": 0.4, "weighted_f1": 0.4}})
    export = params.replace(params.read("export", ROOT / "params.yaml"), enabled=True, gguf=["f16"], merge_into="dequantized")

    figures = release(tmp_path / "split", folder, tmp_path, tmp_path / "release", head_task(), export, batch_size=4,
                      memory_gib=1.0)

    assert figures["gguf"] == {} and figures["gguf_not_made"] == gguf.NO_HEAD
    assert f"export: no GGUF files: {gguf.NO_HEAD}" in capsys.readouterr().out
    assert figures["merge"]["dequantized"]["agreement_with_adapter"] == 1.0
    assert sorted(p.name for p in (tmp_path / "release").iterdir()) == ["adapter", "merged"]
    card = (tmp_path / "release/merged/README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "AutoModelForSequenceClassification" in card
    assert "trained with QLoRA and a classification head" in card


def test_examples_are_numbered_by_the_training_labels_and_a_prompt_must_not_end_in_padding(tokenizer):
    task, kind = head_task(), kinds.get("classification")
    validation = [row for row in ROWS if row["label"] != "frozen"]
    examples = kind.encode(tokenizer, validation, task, LABELS)
    assert [ex["label"] for ex in examples] == [LABELS.index(row["label"]) for row in validation]
    assert all(ex["input_ids"][-1] != tokenizer.pad_token_id for ex in examples)

    with pytest.raises(PipelineError, match="not among the training split's"):
        kind.encode(tokenizer, ROWS, task, LABELS[1:])
    ends_in_pad = dataclasses.replace(task, prompt=params.replace(task.prompt, template="Product: {text}"))
    rows = copy.deepcopy(ROWS[:2])
    rows[1]["text"] += tokenizer.pad_token
    with pytest.raises(PipelineError, match="example 1 ends in the pad token"):
        kind.encode(tokenizer, rows, ends_in_pad, LABELS)


@pytest.mark.parametrize("artifact", ["adapter", "merged"])
def test_the_cards_code_gives_the_heads_probabilities_as_evaluate_scores_them(artifact, tmp_path, tokenizer, capsys):
    from finetune.deliver import card
    from tests.deliver.test_card import INSTACART_EVAL, metadata, python_code

    _, folder = train_head(tmp_path, tokenizer, "llama", "lora")  # fp32 both ways, so the scores compare closely
    run, model, _ = load_trained(folder)
    expected = np.exp(head_scores(model, tokenizer))
    if artifact == "merged":
        merged = merged_model(run, "original")
        folder = save_merged(merged, tokenizer, tmp_path / "merged", merged_run_info(run, "original", merged))
    text = card.model_card(run.info, INSTACART_EVAL, artifact)
    assert metadata(text)["pipeline_tag"] == "text-classification"
    namespace = {}
    exec(python_code(text).replace(f'"{card.WHERE}"', repr(str(folder))), namespace)
    for text_, row in zip(TEXTS, expected):
        got = namespace["label_probabilities"](text_)
        assert list(got) == LABELS and list(got.values()) == pytest.approx(list(row), abs=1e-5)
    assert capsys.readouterr().out.strip().splitlines()[-1] in LABELS
