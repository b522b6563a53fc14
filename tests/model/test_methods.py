"""Every training method and PEFT variant on a tiny model: trained, saved, reloaded and scored the same."""

from __future__ import annotations

import json

import pytest
import torch

from finetune import kinds, params
from finetune.errors import PipelineError
from finetune.evaluate.scoring import label_scores
from finetune.model import methods
from finetune.model.folders import is_whole_model
from finetune.train.trainer import loraplus_optimizer
from finetune.train.training import save_trained, train_model
from tests.conftest import lora_params, tiny_falcon, tiny_llama

LABELS = ["produce", "snacks", "frozen"]
# name: (train.method, lora changes)
CASES = {
    "qlora": ("qlora", {}),
    "lora": ("lora", {}),
    "full": ("full", {}),
    "dora": ("qlora", {"use_dora": True}),
    "rslora": ("qlora", {"use_rslora": True}),
    "gaussian": ("qlora", {"init": "gaussian"}),
    "pissa": ("lora", {"init": "pissa"}),
    "olora": ("lora", {"init": "olora"}),
    "loftq": ("qlora", {"init": "loftq"}),
    "lora_plus": ("qlora", {"plus_lr_ratio": 16.0}),
}


def train_tiny(tmp_path, tokenizer, method: str, lora_changes: dict, arch: str = "llama"):
    """Train a tiny base by `method` for a few steps, as train_qlora does; returns (trained, result, base folder)."""
    base = tmp_path / "base"
    (tiny_llama if arch == "llama" else tiny_falcon)(len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    task = params.read_task(name="instacart")
    rows = [{"id": str(i), "text": f"item {i} kind {i % 3}", "label": LABELS[i % 3]} for i in range(12)]
    examples = kinds.of(task).encode(tokenizer, rows, task)
    task_train = params.replace(task.train, batch_size=4, learning_rate=5e-3)
    train = params.replace(params.read("train"), method=method, logging_steps=1, checkpoint_minutes=0)
    lora = lora_params(r=4, alpha=8, **lora_changes)
    quant = params.read("quantization")
    model = methods.load_base(str(base), "main", method, quant, dense=False)
    trained, result, _ = train_model(model, tokenizer, examples, [], task_train, train, lora, tmp_path / "work",
                                  callbacks=[], base_folder=str(base))
    return trained, result, base, quant


def scores(model, tokenizer) -> torch.Tensor:
    prompts = [f"Product: item {i} kind {i % 3}\nDepartment:" for i in range(4)]
    model.eval()
    return torch.tensor(label_scores(model, tokenizer, prompts, LABELS, " ", batch_size=4))


@pytest.mark.parametrize("case", list(CASES))
def test_each_method_and_variant_trains_saves_reloads_and_scores_the_same(case, tmp_path, tokenizer):
    method, changes = CASES[case]
    trained, result, base, quant = train_tiny(tmp_path, tokenizer, method, changes)
    assert result.method == method and result.steps == 3 and all(map(torch.isfinite, [torch.tensor(result.final_loss)]))
    in_memory = scores(trained.model, tokenizer)
    save_trained(trained, tokenizer, tmp_path / "out", {"params": {"train": {"method": method}}})

    load_base = lambda: methods.load_base(str(base), "main", method, quant)  # noqa: E731
    reloaded = methods.load_trained(tmp_path / "out", load_base)
    torch.testing.assert_close(scores(reloaded, tokenizer), in_memory, rtol=1e-4, atol=1e-4)
    untrained = scores(load_base(), tokenizer)
    assert not torch.allclose(in_memory, untrained, atol=1e-3), "training changed nothing"

    out = tmp_path / "out"
    if method == "full":
        assert is_whole_model(out) and not (out / "adapter_config.json").exists()
        assert result.trainable_parameters == result.total_parameters and result.target_modules == []
        return
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_dora"] is changes.get("use_dora", False)
    assert config["use_rslora"] is changes.get("use_rslora", False)
    if case in ("pissa", "olora"):
        # converted into a plain LoRA adapter of twice the rank on the original base
        assert config["init_lora_weights"] is True and config["r"] == 8
    else:
        assert config["r"] == 4
        expected = {"gaussian": "gaussian"}.get(case, True)
        assert config["init_lora_weights"] == expected


def test_the_variants_reach_peft_before_training(tokenizer):
    model = tiny_llama(len(tokenizer))
    lora = lora_params(r=4, alpha=8, use_dora=True, use_rslora=True, init="gaussian")
    trained = methods.trainable(model, "lora", lora, False, "")
    config = trained.model.peft_config["default"]
    assert (config.use_dora, config.use_rslora, config.init_lora_weights) == (True, True, "gaussian")
    assert any("lora_magnitude_vector" in n for n, p in trained.model.named_parameters() if p.requires_grad)


def test_loftq_starts_the_adapter_where_it_makes_up_for_the_4bit_rounding(tmp_path, tokenizer):
    from bitsandbytes.functional import dequantize_4bit

    from finetune.model.methods import original_weights

    tiny_llama(len(tokenizer)).save_pretrained(tmp_path / "base")
    model = methods.load_base(str(tmp_path / "base"), "main", "qlora", params.read("quantization"), dense=False)
    quantized = {n: dequantize_4bit(m.weight.data, m.weight.quant_state).float() for n, m in model.named_modules()
                 if hasattr(m.weight if hasattr(m, "weight") else None, "quant_state")}
    trained = methods.trainable(model, "qlora", lora_params(r=8, alpha=16, init="loftq"), False, str(tmp_path / "base"))
    weight_of = original_weights(str(tmp_path / "base"))
    layers = [(n, m) for n, m in trained.model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert layers
    for name, module in layers:
        key = name.removeprefix("base_model.model.")
        original, rounded = weight_of(key + ".weight"), quantized[key]
        start = module.scaling["default"] * module.lora_B["default"].weight @ module.lora_A["default"].weight
        assert (original - rounded - start).norm() < 0.9 * (original - rounded).norm(), name


def test_full_fine_tuning_trains_every_weight_in_fp32(tokenizer):
    model = tiny_falcon(len(tokenizer))
    trained = methods.trainable(model, "full", lora_params(), False, "")
    assert all(p.requires_grad and p.dtype == torch.float32 for p in trained.model.parameters())


def test_lora_plus_gives_b_its_ratio_of_the_learning_rate(tokenizer):
    trained = methods.trainable(tiny_llama(len(tokenizer)), "qlora", lora_params(r=4, alpha=8), False, "")
    optimizer = loraplus_optimizer(trained.model, lora_params(plus_lr_ratio=16.0), 1e-3, 0.0)
    rates = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            rates[id(p)] = group["lr"]
    named = dict(trained.model.named_parameters())
    a = {rates[id(p)] for n, p in named.items() if "lora_A" in n}
    b = {rates[id(p)] for n, p in named.items() if "lora_B" in n}
    assert a == {1e-3} and len(b) == 1 and b.pop() == pytest.approx(16e-3)


@pytest.mark.parametrize("init, method", [("pissa", "qlora"), ("olora", "full"), ("loftq", "lora")])
def test_an_init_that_does_not_fit_the_method_is_refused_with_one_line(init, method):
    raw = params.load_yaml()
    raw["lora"]["init"], raw["train"]["method"] = init, method
    with pytest.raises(PipelineError) as error:
        params.validate(raw)
    assert "\n" not in str(error.value) and "train.method" in str(error.value)
