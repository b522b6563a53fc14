import copy
import re

import pytest
import torch
import yaml

from finetune import params
from finetune.deliver import card
from finetune.errors import PipelineError
from tests.conftest import ROOT

ABOUT = {task: params.read_task(ROOT / "params.yaml", name=task).card for task in ("instacart", "chatbot", "chitchat")}

LABELS = ["alcohol", "babies", "bakery", "dairy", "dairy eggs"]  # 'dairy' starts 'dairy eggs': the end token is scored
INSTACART_RUN = {
    "task": {"name": "instacart", "kind": "classification",
             "data": {"source": "instacart", "format": "table", "input_field": "product", "target_field": "department",
                      "drop_labels": ["missing"], "turns": 0},
             "prompt": {"template": "Product: {text}\nDepartment:", "answer_prefix": " "},
             "train": {"epochs": 1, "batch_size": 16, "learning_rate": 0.001, "max_length": 128}},
    "labels": LABELS,
    "params": {"base_model": {"name": "models/base/smollm2-135m-instruct", "revision": "main"},
               "quantization": {"quant_type": "nf4", "double_quant": True},
               "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
               "train": {"method": "qlora", "seed": 42, "gradient_accumulation": 1, "warmup_ratio": 0.05}},
    "base_model": {"name": "models/base/smollm2-135m-instruct", "sha256": "5e1f" * 16},
    "data_sha256": "da7a" * 16,
    "libraries": {"python": "3.11.7", "torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2"},
    "result": {"final_loss": 1.2, "validation_loss": 1.3, "runtime_s": 388.0, "steps": 225, "trained_tokens": 54000,
               "tokens_per_s": 141.0, "peak_memory_gib": 3.0, "trainable_parameters": 4884480,
               "total_parameters": 139399488, "target_modules": ["q_proj"], "batch_size": 16,
               "gradient_checkpointing": False, "compiled": False, "device": "cpu"},
}
INSTACART_EVAL = {
    "base": {"accuracy": 0.0883, "macro_f1": 0.0451, "weighted_f1": 0.0532, "no_label_rate": 0.0},
    "finetuned": {"accuracy": 0.7083, "macro_f1": 0.5801, "weighted_f1": 0.6963, "no_label_rate": 0.0},
    "classic": {"accuracy": 0.7467, "macro_f1": 0.6289, "weighted_f1": 0.7371, "no_label_rate": 0.0},
}
CHATBOT_SYSTEM = "You are a supportive mental-health assistant. You are not a substitute for professional care."
CHATBOT_RUN = {
    **copy.deepcopy(INSTACART_RUN),
    "task": {"name": "chatbot", "kind": "generation",
             "data": {"source": "data/raw/chatbot.csv", "format": "table", "input_field": "prompt",
                      "target_field": "response", "drop_labels": [], "turns": 0},
             "prompt": {"system": CHATBOT_SYSTEM, "chat_template": "auto"},
             "train": {"epochs": 3, "batch_size": 8, "learning_rate": 0.0002, "max_length": 384}},
    "labels": None,
}
CHAT_EVAL = {
    "base": {"bleu": 0.792, "rouge_l": 0.0834, "perplexity": 77.2071, "distinct_1": 0.282, "distinct_2": 0.636,
             "repeated_sentence_rate": 0.01},
    "finetuned": {"bleu": 0.2504, "rouge_l": 0.0941, "perplexity": 36.2043, "distinct_1": 0.2831, "distinct_2": 0.561,
                  "repeated_sentence_rate": 0.0},
}


def metadata(text: str) -> dict:
    """The YAML front matter, parsed on its own (not by the library that wrote it)."""
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, text[:200]
    return yaml.safe_load(match.group(1))


def section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in section(text, "Evaluation").splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def python_code(text: str) -> str:
    return section(text, "How to use it").split("```python\n", 1)[1].split("```", 1)[0]


def test_adapter_card_metadata_names_the_hub_model_the_embedded_base_was_exported_from():
    text = card.model_card(INSTACART_RUN, INSTACART_EVAL, "adapter")
    meta = metadata(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert {"qlora", "lora", "text-classification", "dvc"} <= set(meta["tags"]) and "text-generation" not in meta["tags"]
    assert "datasets" not in meta  # the Instacart catalog comes from a package, not a hub dataset
    assert "Q4_1" in text  # the card says the trained-on base is an export, not the hub's weights


def test_classification_card_shows_labels_prompt_metrics_training_and_provenance():
    text = card.model_card(INSTACART_RUN, INSTACART_EVAL, "adapter", about=ABOUT["instacart"])
    assert "Product: {text}\nDepartment:" in section(text, "What it does")
    assert "replaced by the input (the `product` field)" in section(text, "What it does")
    assert "Instacart product catalog" in text and "`data.source: instacart`" in text
    assert "`dairy eggs`" in section(text, "What it does")
    assert table_rows(text) == {
        "model": ["accuracy", "macro-F1", "weighted-F1", "no valid label"],
        "Base model (zero-shot)": ["0.088", "0.045", "0.053", "0.000"],
        "Fine-tuned (QLoRA)": ["0.708", "0.580", "0.696", "0.000"],
        "TF-IDF + logistic regression, same split": ["0.747", "0.629", "0.737", "0.000"],
    }
    training = yaml.safe_load(section(text, "Training").split("```yaml\n", 1)[1].split("```", 1)[0])
    assert training["lora"] == INSTACART_RUN["params"]["lora"]
    assert training["tasks.instacart.train"]["learning_rate"] == 0.001
    assert "225 optimizer steps" in section(text, "Training")
    provenance = section(text, "Provenance")
    assert "da7a" * 16 in provenance and "5e1f" * 16 in provenance and "peft 0.21.2" in provenance
    limits = section(text, "Intended use and limits")
    assert "5 labels" in limits and "small model (139M parameters)" in limits and "one held-out test split" in limits


def test_adapter_card_loads_with_peft_and_merged_card_with_plain_transformers():
    adapter = python_code(card.model_card(INSTACART_RUN, INSTACART_EVAL, "adapter"))
    assert "PeftModel.from_pretrained(base, MODEL)" in adapter
    assert 'from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct", quantization_config=quantization)' in adapter
    merged_text = card.model_card(INSTACART_RUN, INSTACART_EVAL, "merged")
    merged = python_code(merged_text)
    assert "peft" not in merged.lower() and "BitsAndBytesConfig" not in merged
    assert "AutoModelForCausalLM.from_pretrained(MODEL" in merged
    assert metadata(merged_text)["library_name"] == "transformers"


def test_generation_card_has_no_classic_row_and_the_chatbot_card_says_it_is_no_substitute_for_care():
    text = card.model_card(CHATBOT_RUN, CHAT_EVAL, "adapter", about=ABOUT["chatbot"])
    rows = table_rows(text)
    assert list(rows) == ["model", "Base model (zero-shot)", "Fine-tuned (QLoRA)"]
    assert rows["Fine-tuned (QLoRA)"] == ["0.250", "0.094", "36.204", "0.283", "0.561", "0.000"]
    assert "TF-IDF" not in text and "text-generation" in metadata(text)["tags"]
    assert "not a substitute for professional care" in section(text, "Intended use and limits")
    # ... from the task's params: whatever the task is named or its system message says
    renamed = copy.deepcopy(CHATBOT_RUN)
    renamed["task"]["name"], renamed["task"]["prompt"]["system"] = "support_bot", ""
    assert "not a substitute for professional care" in section(
        card.model_card(renamed, CHAT_EVAL, "merged", about=ABOUT["chatbot"]), "Intended use and limits")
    assert "professional care" not in section(card.model_card(CHATBOT_RUN, CHAT_EVAL, "adapter", about=ABOUT["chitchat"]),
                                              "Intended use and limits")


@pytest.mark.parametrize("method, lora, words", [
    ("qlora", {}, "QLoRA"), ("lora", {"use_dora": True, "plus_lr_ratio": 16}, "LoRA with DoRA and LoRA+"),
    ("full", {}, "full fine-tuning")])
def test_the_card_names_the_method_and_variant_as_trained(method, lora, words):
    run = copy.deepcopy(INSTACART_RUN)
    run["params"]["train"]["method"] = method
    run["params"]["lora"].update(lora)
    text = card.model_card(run, INSTACART_EVAL, "merged")
    assert f"Fine-tuned ({words})" in table_rows(text) and f"trained with {words} (" in text
    if method == "full":
        assert "LoRA" not in text.split("## Training")[0] and "a fine-tuned version of" in text


def test_a_hub_base_keeps_its_id_and_revision_and_a_hub_dataset_is_listed():
    run = copy.deepcopy(CHATBOT_RUN)
    run["task"]["name"] = "guanaco"
    run["task"]["data"]["source"] = "hub:someone/own-guanaco-copy"  # what run.json records wins over the known id
    run["params"]["base_model"] = {"name": "tiiuae/falcon-7b", "revision": "abc123"}
    run["base_model"] = {"name": "tiiuae/falcon-7b", "revision": "abc123"}
    run["result"]["total_parameters"] = 6_921_720_704
    text = card.model_card(run, CHAT_EVAL, "adapter")
    meta = metadata(text)
    assert meta["base_model"] == "tiiuae/falcon-7b" and meta["datasets"] == ["someone/own-guanaco-copy"]
    del run["task"]["data"]  # an older run.json: no data source, no dataset claimed
    assert "datasets" not in metadata(card.model_card(run, CHAT_EVAL, "adapter"))
    assert 'from_pretrained("tiiuae/falcon-7b", revision="abc123", quantization_config=quantization)' in python_code(text)
    assert "revision `abc123`" in section(text, "Provenance")
    assert "small model" not in text and "Q4_1" not in text


def test_an_unknown_local_base_is_named_in_the_text_but_not_claimed_as_a_hub_model():
    run = copy.deepcopy(INSTACART_RUN)
    run["params"]["base_model"]["name"] = "models/base/my-model"
    text = card.model_card(run, INSTACART_EVAL, "merged")
    assert "base_model" not in metadata(text)
    assert "`models/base/my-model` (a local folder)" in text


def test_missing_metrics_say_how_to_make_them():
    text = card.model_card(INSTACART_RUN, None, "merged")
    assert "`dvc repro evaluate`" in section(text, "Evaluation") and "| model |" not in text
    assert "## Export" not in text


def test_the_export_stages_figures_are_listed_and_the_merge_is_explained():
    figures = {"merge": {"original": {"agreement_with_adapter": 0.9883, "accuracy": 0.705, "rows": 600},
                         "dequantized": {"agreement_with_adapter": 1.0, "accuracy": 0.7083, "rows": 600}},
               "merged_into": "dequantized", "gguf": {"q8_0": {"file": "model-q8_0.gguf", "mib": 138.5}}}
    run = {**INSTACART_RUN, "merge": {"into": "dequantized", "adapter": "models/adapter", "dtype": "float32"}}
    text = card.model_card(run, INSTACART_EVAL, "merged", extra=figures)
    assert section(text, "Export").strip().splitlines() == [
        "- merge:", "  - original:", "    - agreement_with_adapter: 0.9883", "    - accuracy: 0.705", "    - rows: 600",
        "  - dequantized:", "    - agreement_with_adapter: 1.0", "    - accuracy: 0.7083", "    - rows: 600",
        "- merged_into: dequantized", "- gguf:", "  - q8_0:", "    - file: model-q8_0.gguf", "    - mib: 138.5"]
    assert "merged into the 4-bit weights it was trained against" in text
    run["merge"]["into"] = "original"
    assert "merged into the base's own weights" in card.model_card(run, INSTACART_EVAL, "merged")
    assert "merged into" not in card.model_card(run, INSTACART_EVAL, "adapter").split("## Export")[0]


def test_bad_input_is_a_pipeline_error():
    with pytest.raises(PipelineError, match="no label set"):
        card.model_card({**INSTACART_RUN, "labels": None}, INSTACART_EVAL, "adapter")
    with pytest.raises(PipelineError, match="run.json has no 'params'"):
        card.model_card({"task": INSTACART_RUN["task"]}, None, "adapter")


def test_write_card_writes_a_readme_the_hub_library_reads_back(tmp_path):
    from huggingface_hub import ModelCard

    text = card.model_card(INSTACART_RUN, INSTACART_EVAL, "gguf")
    path = card.write_card(tmp_path / "export", text)
    assert path == tmp_path / "export" / "README.md" and path.read_text(encoding="utf-8") == text
    data = ModelCard.load(path).data.to_dict()
    assert "library_name" not in data and "gguf" in data["tags"]
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["README.md"]  # no temporary file left


def _tiny_adapter(tmp_path, tokenizer):
    """A tiny Llama base folder and a non-zero LoRA adapter on it, saved as train_qlora saves one."""
    from peft import get_peft_model

    from finetune.model.adapters import lora_config
    from tests.conftest import lora_params, tiny_llama

    base = tiny_llama(len(tokenizer))
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, lora_config(base, lora_params(r=4, alpha=8, target_modules="all-linear")))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero; the adapter must change the scores to count
            torch.nn.init.normal_(p, std=0.05)
    model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    return model


def _run_card_code(text: str, folder, capsys) -> dict:
    code = python_code(text)
    assert f'"{card.WHERE}"' in code
    namespace = {}
    exec(code.replace(f'"{card.WHERE}"', repr(str(folder))), namespace)
    namespace["printed"] = capsys.readouterr().out.strip()
    return namespace


@pytest.mark.parametrize("artifact", ["adapter", "merged"])
def test_the_cards_classification_code_scores_labels_as_evaluate_does(tmp_path, tokenizer, capsys, artifact):
    from finetune.evaluate.scoring import label_scores
    from finetune.text.prompts import render_prompt

    model = _tiny_adapter(tmp_path, tokenizer)
    folder = tmp_path / "adapter"
    if artifact == "merged":
        folder = tmp_path / "merged"
        model.merge_and_unload().save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    run = copy.deepcopy(INSTACART_RUN)
    run["params"]["base_model"]["name"] = str(tmp_path / "base")
    run["params"]["train"]["method"] = "lora"  # fp32 both ways, so the scores can be compared closely
    ns = _run_card_code(card.model_card(run, INSTACART_EVAL, artifact), folder, capsys)
    texts = ["Organic Whole Milk", "Red Wine", "Sourdough Bread"]
    expected = label_scores(ns["model"], ns["tokenizer"], [render_prompt(run["task"]["prompt"]["template"], t) for t in texts],
                            LABELS, " ", batch_size=2)
    for text, row in zip(texts, expected):
        got = ns["label_scores"](text)
        assert list(got) == LABELS
        assert list(got.values()) == pytest.approx(list(row), abs=1e-4)  # sums of ~2-3 fp32 log-probabilities of ~-11
    assert ns["printed"] in LABELS


@pytest.mark.parametrize("chat_template", ["auto", "plain"])
def test_the_cards_chat_code_builds_the_prompt_training_built(tmp_path, tokenizer, capsys, chat_template):
    from finetune.text.chat import conversation_prompt_ids

    _tiny_adapter(tmp_path, tokenizer)
    run = copy.deepcopy(CHATBOT_RUN)
    run["params"]["base_model"]["name"] = str(tmp_path / "base")
    run["task"]["prompt"]["chat_template"] = chat_template
    ns = _run_card_code(card.model_card(run, CHAT_EVAL, "adapter"), tmp_path / "adapter", capsys)  # in 4-bit
    user = ns["messages"][-1]
    assert ns["inputs"]["input_ids"][0].tolist() == conversation_prompt_ids(tokenizer, [user], CHATBOT_SYSTEM,
                                                                            chat_template, max_length=384)
    assert isinstance(ns["printed"], str)
