"""finetune predict: label, probability and top-k per row, the same labels as evaluate, bad rows kept with a status."""

import csv
import json

import numpy as np
import pandas as pd
import pytest

from finetune.deliver.predict import predict_file
from tests.deliver.conftest import answer_conversations, classify_texts
from finetune.deliver.trained import load_trained
from finetune.errors import PipelineError
from finetune.evaluate import scoring
from tests import conversation_files
from tests.deliver.conftest import LABELS

PRODUCTS = ["Organic Whole Milk", "Spaghetti No. 5", "Frozen Peas", "Baby Spinach", "Salted Pretzels",
            "Greek Yogurt Honey", "Penne Rigate", "Ice Cream Sandwiches"]


@pytest.fixture(scope="module")
def loaded(classifier):
    return load_trained(classifier)


def write_csv(path, rows: list[list[str]], header=("product", "sku")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def test_classification_rows_get_label_probability_and_top_k_as_evaluate_scores_them(tmp_path, loaded):
    run, model, tokenizer = loaded
    write_csv(tmp_path / "new.csv", [[p, str(i)] for i, p in enumerate(PRODUCTS)])
    counts = predict_file(run, model, tokenizer, tmp_path / "new.csv", tmp_path / "out.csv", batch_size=3,
                          memory_gib=1.0, top_k=3)
    assert counts == {"ok": len(PRODUCTS), "empty": 0, "unreadable": 0}
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["row", "product", "status", "label", "probability", "top_k"]
    assert out["product"].tolist() == PRODUCTS and out["row"].tolist() == list(range(len(PRODUCTS)))
    assert out["label"].tolist() == classify_texts(run, model, tokenizer, PRODUCTS, batch_size=3, memory_gib=1.0)
    for _, row in out.iterrows():
        top = json.loads(row["top_k"])
        assert len(top) == 3 and top[0]["label"] == row["label"] and top[0]["probability"] == row["probability"]
        assert {t["label"] for t in top} <= set(LABELS)
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
        assert 0 < sum(t["probability"] for t in top) <= 1 + 1e-6  # a share of a softmax over all 5 labels


def test_probability_is_the_softmax_of_the_label_log_likelihoods():
    scores = np.log(np.array([[0.2, 0.6, 0.2], [0.5, 0.25, 0.25]])) - 7.0  # any common offset cancels
    np.testing.assert_allclose(scoring.label_probabilities(scores), [[0.2, 0.6, 0.2], [0.5, 0.25, 0.25]], rtol=1e-12)


def test_chunks_and_formats_do_not_change_the_predictions(tmp_path, loaded):
    run, model, tokenizer = loaded
    write_csv(tmp_path / "new.csv", [[p, ""] for p in PRODUCTS])
    predict_file(run, model, tokenizer, tmp_path / "new.csv", tmp_path / "whole.jsonl", batch_size=8, memory_gib=1.0,
                 top_k=2)
    pd.DataFrame({"product": PRODUCTS}).to_parquet(tmp_path / "new.parquet")
    predict_file(run, model, tokenizer, tmp_path / "new.parquet", tmp_path / "chunked.parquet", chunk_rows=3,
                 batch_size=2, memory_gib=1.0, top_k=2)
    whole = pd.read_json(tmp_path / "whole.jsonl", lines=True)
    chunked = pd.read_parquet(tmp_path / "chunked.parquet")
    assert whole["label"].tolist() == chunked["label"].tolist()
    # fp32 log-likelihoods in other batch shapes differ by ulps; a probability of ~0.2 by far less than 1e-5
    np.testing.assert_allclose(whole["probability"], chunked["probability"], atol=1e-5)
    assert isinstance(whole["top_k"][0], list) and json.loads(chunked["top_k"][0])[0]["label"] == chunked["label"][0]


def test_empty_and_unreadable_rows_get_a_status_not_a_crash(tmp_path, loaded):
    run, model, tokenizer = loaded
    path = tmp_path / "messy.csv"
    path.write_bytes(b'product,sku\nOrganic Whole Milk,1\n,2\n   ,3\n"Frozen, Peas",4\nbad row,with,extra\n'
                     b'Caf\xe9 Latte,5\n\nPenne,6\n')
    predict_file(run, model, tokenizer, path, tmp_path / "out.jsonl", batch_size=4, memory_gib=1.0, top_k=1)
    out = pd.read_json(tmp_path / "out.jsonl", lines=True)
    assert out["status"].tolist() == ["ok", "empty", "empty", "ok", "unreadable", "unreadable", "empty", "ok"]
    assert out.loc[out["status"] == "ok", "label"].isin(LABELS).all()
    assert out.loc[out["status"] != "ok", "label"].isna().all()
    assert out["product"][3] == "Frozen, Peas"


def test_jsonl_lines_that_are_not_json_are_unreadable_rows(tmp_path, loaded):
    run, model, tokenizer = loaded
    (tmp_path / "in.jsonl").write_text('{"text": "Milk"}\n{not json\n{"text": null}\n["a list"]\n{"text": "Peas"}\n')
    counts = predict_file(run, model, tokenizer, tmp_path / "in.jsonl", tmp_path / "out.csv", batch_size=4,
                          memory_gib=1.0, top_k=1)
    assert counts == {"ok": 2, "empty": 1, "unreadable": 2}


def test_the_input_column_is_the_trained_input_field_or_named(tmp_path, loaded):
    run, model, tokenizer = loaded
    write_csv(tmp_path / "other.csv", [["Milk", "x"]], header=("name", "sku"))
    with pytest.raises(PipelineError, match="no column product or text; it has name, sku; name one with --column"):
        predict_file(run, model, tokenizer, tmp_path / "other.csv", tmp_path / "out.csv", batch_size=1, memory_gib=1.0,
                     top_k=1)
    predict_file(run, model, tokenizer, tmp_path / "other.csv", tmp_path / "out.csv", column="name", batch_size=1,
                 memory_gib=1.0, top_k=1)
    assert pd.read_csv(tmp_path / "out.csv")["name"].tolist() == ["Milk"]
    assert not (tmp_path / "nothing.csv").exists()
    with pytest.raises(PipelineError, match="unknown format '.txt'"):
        predict_file(run, model, tokenizer, tmp_path / "other.csv", tmp_path / "out.txt", batch_size=1, memory_gib=1.0,
                     top_k=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.csv", "out.csv"]  # nothing half-written


def test_generation_answers_each_prompt_as_evaluate_generates(tmp_path, chatter):
    run, model, tokenizer = load_trained(chatter)
    prompts = ["hey, how was your weekend?", "what kind of music do you like?", ""]
    pd.DataFrame({"text": prompts}).to_csv(tmp_path / "prompts.csv", index=False)
    counts = predict_file(run, model, tokenizer, tmp_path / "prompts.csv", tmp_path / "answers.jsonl", batch_size=2,
                          max_new_tokens=5, no_repeat_ngram_size=0)
    assert counts == {"ok": 2, "empty": 1, "unreadable": 0}
    out = pd.read_json(tmp_path / "answers.jsonl", lines=True)
    assert list(out.columns) == ["row", "text", "status", "answer"]
    expected = answer_conversations(run, model, tokenizer, [[{"role": "user", "content": p}] for p in prompts[:2]],
                                    batch_size=2, max_new_tokens=5, no_repeat_ngram_size=0)
    assert out["answer"][:2].tolist() == expected and pd.isna(out["answer"][2])


@pytest.mark.parametrize("fmt", conversation_files.FORMATS)
def test_generation_answers_the_last_user_turn_of_each_conversation_in_a_file(tmp_path, chatter, fmt):
    run, model, tokenizer = load_trained(chatter)
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi!"},
               {"role": "assistant", "content": "hello, how are you?"}, {"role": "user", "content": "tired. you?"}]
    answered = history + [{"role": "assistant", "content": "a reference answer, not given to the model"}]
    source = conversation_files.write(tmp_path / f"chats.{fmt}.jsonl", fmt, [answered, answered[:2] + answered[2:]])
    with open(source, "a", encoding="utf-8") as f:
        f.write('{"messages": "not turns", "conversations": 3, "instruction": "", "prompt": ""}\n')
    counts = predict_file(run, model, tokenizer, source, tmp_path / "answers.parquet", batch_size=2,
                          max_new_tokens=5, no_repeat_ngram_size=0)
    out = pd.read_parquet(tmp_path / "answers.parquet")
    expected = answer_conversations(run, model, tokenizer, [history], batch_size=1, max_new_tokens=5,
                                    no_repeat_ngram_size=0)
    assert out["prompt"][:2].tolist() == ["tired. you?"] * 2 and out["answer"][:2].tolist() == expected * 2
    assert counts["ok"] == 2 and out["status"][2] in ("not_a_list", "empty_content") and counts[out["status"][2]] == 1


def test_a_merged_folder_predicts_what_its_adapter_predicts(tmp_path, classifier, loaded):
    from finetune.deliver.merge import merged_model, merged_run_info, save_merged
    from finetune.deliver.trained import read_run
    from finetune.model import base_model

    run = read_run(classifier)
    model = merged_model(run, "dequantized")
    save_merged(model, base_model.load_tokenizer(str(classifier), "main"), tmp_path / "merged",
                merged_run_info(run, "dequantized", model))
    merged_run, merged, tokenizer = load_trained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    adapter_run, on_4bit, _ = loaded
    assert classify_texts(merged_run, merged, tokenizer, PRODUCTS, 4, 1.0) == \
        classify_texts(adapter_run, on_4bit, tokenizer, PRODUCTS, 4, 1.0)

