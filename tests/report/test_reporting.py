"""The report names the run as it was trained (QLoRA, LoRA and its variants, full fine-tuning), from its run.json."""

from __future__ import annotations

import pandas as pd
import pytest

from finetune.report.reporting import build_report

LABELS = ["dairy", "frozen"]
EVALUATION = {name: {"accuracy": 0.5, "macro_f1": 0.5, "weighted_f1": 0.5, "no_label_rate": 0.0}
              for name in ("base", "finetuned", "classic")}
PER_CLASS = {name: {label: {"f1": 0.5, "support": 1} for label in LABELS} for name in EVALUATION}
TRAINING = {"steps": 3, "device": "cpu", "batch_size": 2, "trainable_parameters": 10, "total_parameters": 100,
            "target_modules": ["q_proj"], "final_loss": 1.0, "validation_loss": 1.1}


@pytest.mark.parametrize("method, lora, words", [
    ("qlora", {}, "QLoRA"), ("lora", {"use_rslora": True, "init": "pissa"}, "LoRA with rsLoRA and PiSSA init"),
    ("full", {}, "full fine-tuning")])
def test_the_report_names_the_method_and_variant_as_trained(tmp_path, method, lora, words):
    predictions = pd.DataFrame({"id": ["1", "2"], "text": ["Milk", "Peas"], "actual": LABELS, "base": LABELS,
                                "finetuned": LABELS[::-1], "classic": LABELS})
    all_params = {"train": {"method": method, "logging_steps": 1},
                  "lora": {"r": 8, "use_dora": False, "use_rslora": False, "init": "default", "plus_lr_ratio": 0, **lora}}
    run_info = {"params": all_params, "base_model": {"name": "models/base/tiny", "revision": "main"}}
    text = build_report(task={"name": "toy", "kind": "classification", "params": {}}, evaluation=EVALUATION,
                        details={"per_class": PER_CLASS}, training=TRAINING,
                        split_sizes={"train": 4, "validation": 1, "test": 2}, predictions=predictions,
                        run_info=run_info, all_params=all_params, live_dir=tmp_path / "live",
                        image_dir=tmp_path / "images", samples=2)
    assert f"| Fine-tuned ({words}) |" in text and f"trained with {words}" in text
    assert ("LoRA rank 8" in text) is (method != "full")
    assert "QLoRA" not in text if method != "qlora" else "QLoRA" in text
