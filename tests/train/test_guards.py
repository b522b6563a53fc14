"""A diverging run stops at once with one line that names the step and what to try."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from finetune import kinds, params
from finetune.errors import PipelineError
from finetune.model import base_model
from finetune.train.guards import GradientGuard
from finetune.train.training import train_model
from tests.conftest import tiny_llama


def test_a_huge_learning_rate_stops_training_with_one_line(tmp_path, tokenizer):
    tiny_llama(len(tokenizer)).save_pretrained(tmp_path / "base")
    task = params.read_task(name="instacart")
    rows = [{"id": str(i), "text": f"item {i}", "label": ["snacks", "produce"][i % 2]} for i in range(16)]
    examples = kinds.of(task).encode(tokenizer, rows, task)
    task_train = params.replace(task.train, batch_size=2, learning_rate=1e30)
    model = base_model.dense_copy(base_model.load_model(str(tmp_path / "base"), "main",
                                                            base_model.quantization_config(True, "nf4", True)))
    with pytest.raises(PipelineError) as error:
        train_model(model, tokenizer, examples, [], task_train, params.read("train"),
                      params.replace(params.read("lora"), r=4, alpha=8), tmp_path / "work", callbacks=[])
    message = str(error.value)
    assert message.startswith("training diverged at step ") and "\n" not in message
    assert "the loss is nan" in message or "the gradient norm is" in message
    assert "lower the task's train.learning_rate (now 1e+30)" in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_gradient_is_caught_before_the_optimizer_step(bad):
    layer = torch.nn.Linear(4, 4)
    layer(torch.ones(1, 4)).sum().backward()
    layer.weight.grad[0, 0] = bad
    guard = GradientGuard("lower it")
    with pytest.raises(PipelineError, match=r"training diverged at step 8: the gradient norm is (nan|inf); lower it"):
        guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=7), None, model=layer)
    layer.weight.grad[0, 0] = 1.0
    assert guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=7), "control", model=layer) == "control"


def test_the_gradient_guard_checks_only_the_trainable_weights_and_keeps_their_list():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[0].requires_grad_(False)
    model(torch.ones(1, 4)).sum().backward()
    model[0].weight.grad = torch.full((4, 4), float("nan"))  # a frozen weight's stray gradient is not the adapter's
    guard = GradientGuard("lower it")
    assert guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=0), "control", model=model) == "control"
    assert guard.trainable == [model[1].weight, model[1].bias]
    model[1].weight.grad[0, 0] = float("inf")
    with pytest.raises(PipelineError, match="the gradient norm is inf"):
        guard.on_pre_optimizer_step(None, SimpleNamespace(global_step=1), None, model=None)  # the kept list


def test_the_advice_names_the_rate_a_grown_batch_trained_at_beside_the_params_own():
    from finetune.train.guards import advice

    plain = advice(0.001, 0.05)
    assert "train.learning_rate (now 0.001)" in plain and "gpu_lr_scaling" not in plain
    scaled = advice(0.001, 0.05, scaled_to=0.0041)
    assert "now 0.001, which the GPU's grown batch scaled to 0.0041" in scaled
    assert "train.gpu_lr_scaling: none" in scaled
