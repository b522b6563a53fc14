"""The export stage's release of a whole model (full fine-tuning): nothing to merge, the model checked against its
own test predictions, written with its card. (An adapter's release runs end to end in tests/test_pipeline.py.)"""

from __future__ import annotations

import pandas as pd

from finetune import params
from finetune.deliver.export import release
from finetune.deliver.trained import load_trained
from finetune.files import write_json, write_jsonl
from finetune.model.methods import Trainable
from finetune.train.training import save_trained
from tests.conftest import ROOT, tiny_llama
from tests.deliver.conftest import CLASSIFY, LABELS, classify_texts

TEXTS = ["Organic Whole Milk", "Frozen Peas", "Penne Rigate", "Sea Salt Crisps"]


def test_a_whole_model_is_released_as_the_merged_model_it_already_is(tmp_path, tokenizer):
    model = tiny_llama(len(tokenizer))
    run_info = {"task": CLASSIFY, "labels": LABELS,
                "params": {"base_model": {"name": "models/base/tiny", "revision": "main"},
                           "quantization": {"quant_type": "nf4", "double_quant": True}, "train": {"method": "full"},
                           "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}},
                "base_model": {"name": "models/base/tiny"}, "data_sha256": "0" * 64, "libraries": {}, "result": {}}
    save_trained(Trainable(model=model, method="full", target_modules=[]), tokenizer, tmp_path / "trained", run_info)
    run, trained, _ = load_trained(tmp_path / "trained")
    answers = classify_texts(run, trained, tokenizer, TEXTS, batch_size=4, memory_gib=1.0)  # as evaluate wrote them
    write_jsonl(tmp_path / "split/test.jsonl", [{"id": str(i), "text": t, "label": LABELS[i]} for i, t in enumerate(TEXTS)])
    pd.DataFrame({"id": range(len(TEXTS)), "finetuned": answers}).to_csv(tmp_path / "predictions.csv", index=False)
    write_json(tmp_path / "eval.json", {"finetuned": {"accuracy": 0.25, "macro_f1": 0.1, "weighted_f1": 0.1}})

    task = params.read_task(ROOT / "params.yaml", name="instacart")
    export = params.replace(params.read("export", ROOT / "params.yaml"), enabled=True, gguf=[])
    figures = release(tmp_path / "split", tmp_path / "trained", tmp_path, tmp_path / "release", task, export,
                      batch_size=4, memory_gib=1.0)

    assert figures["merged_into"] == "none" and figures["gguf"] == {}
    assert figures["merge"]["none"]["agreement_with_adapter"] == 1.0 and figures["merge"]["none"]["rows"] == 4
    assert sorted(p.name for p in (tmp_path / "release").iterdir()) == ["merged"]  # no adapter to copy
    assert (tmp_path / "release/merged/model.safetensors").is_file()
    assert (tmp_path / "release/merged/README.md").read_text().startswith("---\n")
