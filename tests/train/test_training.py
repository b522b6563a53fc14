"""Training: the step plan (what a GPU picks by itself: batch growth, learning rate, packing, activation
checkpointing, compiled blocks), decided without a model; compiled blocks, parameter counts, the adapter trained."""


import pytest
import torch

from finetune import params
from finetune.errors import PipelineError
from finetune.model import methods
from finetune.train.memory import StepMemory, activation_bytes, lora_parameters
from finetune.train.plan import (LARGE_MODEL, Device, ModelSize, device_batch_size, plan_step, scaled_learning_rate,
                                 wants_checkpointing, wants_compile, wants_padding_free)
from finetune.train.training import compile_blocks, lora_inputs_uncast, parameter_count


def settings(**train_overrides):
    task = params.read_task("params.yaml", None, "instacart")
    return task.train, params.replace(params.read("train"), **train_overrides)


def test_cpu_keeps_the_tasks_batch_whatever_the_lengths():
    task_train, train = settings(gpu_batch_tokens=4096, gpu_min_steps=10)
    assert device_batch_size(task_train, train, [12] * 100_000, on_gpu=False) == task_train.batch_size


def test_gpu_grows_the_batch_to_the_token_budget_at_the_longest_example():
    task_train, train = settings(gpu_batch_tokens=4096, gpu_min_steps=200)
    lengths = [10] * 50_000 + [40]
    assert device_batch_size(task_train, train, lengths, on_gpu=True) == 4096 // 40


def test_gpu_batch_keeps_the_minimum_number_of_steps():
    task_train, train = settings(gpu_batch_tokens=4096, gpu_min_steps=200)
    lengths = [20] * 6_000   # 204 examples would fit the budget; 6,000 / 200 steps allows 30
    assert device_batch_size(task_train, train, lengths, on_gpu=True) == max(task_train.batch_size, 30)


def test_gpu_batch_never_shrinks_below_the_tasks():
    task_train, train = settings(gpu_batch_tokens=4096, gpu_min_steps=200)
    assert device_batch_size(task_train, train, [512] * 100_000, on_gpu=True) == task_train.batch_size
    small_split = [20] * 1_000
    assert device_batch_size(task_train, train, small_split, on_gpu=True) == task_train.batch_size
    _, off = settings(gpu_batch_tokens=0)
    assert device_batch_size(task_train, off, [10] * 100_000, on_gpu=True) == task_train.batch_size


def test_packed_batches_grow_to_the_token_budget_at_the_mean_length():
    task_train, train = settings(gpu_batch_tokens=4096, gpu_min_steps=10)
    lengths = [10] * 50_000 + [40] * 50_000   # mean 25
    assert device_batch_size(task_train, train, lengths, on_gpu=True, packed=True) == 4096 // 25
    assert device_batch_size(task_train, train, lengths, on_gpu=True, packed=False) == 4096 // 40


def test_the_low_memory_mode_holds_a_step_to_the_tasks_batch_at_its_max_length():
    task_train, low = settings(gpu_batch_tokens=8192, gpu_min_steps=10, gradient_checkpointing=True)
    _, auto = settings(gpu_batch_tokens=8192, gpu_min_steps=10)
    task_tokens = task_train.batch_size * task_train.max_length
    assert task_tokens < 8192
    full_rows = [task_train.max_length] * 100_000
    assert device_batch_size(task_train, low, full_rows, on_gpu=True) == task_train.batch_size
    assert device_batch_size(task_train, auto, full_rows, on_gpu=True) == 8192 // task_train.max_length
    short = [10] * 100_000   # still grown, to the task's tokens
    assert device_batch_size(task_train, low, short, on_gpu=True, packed=True) == task_tokens // 10
    assert device_batch_size(task_train, auto, short, on_gpu=True, packed=True) == 8192 // 10


def test_auto_compile_switches_on_only_for_a_large_model_on_a_gpu():
    assert wants_compile("auto", LARGE_MODEL, on_gpu=True)
    assert not wants_compile("auto", LARGE_MODEL - 1, on_gpu=True)
    assert not wants_compile("auto", 10 * LARGE_MODEL, on_gpu=False)
    assert wants_compile(True, 1, on_gpu=False)
    assert not wants_compile(False, 10 * LARGE_MODEL, on_gpu=True)


GIB = 2**30


def test_auto_checkpointing_is_on_only_where_the_activations_do_not_fit_the_free_memory():
    roomy = StepMemory(activations=20 * GIB, optimizer=1 * GIB, free=130 * GIB)    # a 7B step on an H200
    tight = StepMemory(activations=20 * GIB, optimizer=1 * GIB, free=18 * GIB)     # the same on a 24 GB card
    full = StepMemory(activations=20 * GIB, optimizer=115 * GIB, free=130 * GIB)   # full fine-tuning's AdamW states
    assert not wants_checkpointing("auto", roomy)
    assert wants_checkpointing("auto", tight) and wants_checkpointing("auto", full)
    assert not wants_checkpointing("auto", None)  # CPU
    assert wants_checkpointing(True, roomy) and not wants_checkpointing(False, tight)  # true: the low-memory mode


def test_a_7b_step_of_4096_tokens_is_estimated_near_what_autograd_keeps():
    """Llama-2-7B's shape at 4,096 tokens: 32 layers x (12 x 4,096 + 4 x 11,008) bf16 values a token, about 23 GiB
    (the H100 profile put the kept tensors at 0.4 GiB a layer, 13 GiB: the estimate errs on the safe side)."""
    from transformers import LlamaConfig

    estimate = activation_bytes(LlamaConfig(), tokens=4096, logits_tokens=0)
    assert 13 * GIB < estimate < 30 * GIB
    assert activation_bytes(LlamaConfig(), 4096, 4096) - estimate == 4096 * 32000 * 10  # bf16 logits, fp32 copy, grad


def test_lora_parameters_count_every_linear_layer_but_the_head():
    from tests.conftest import tiny_llama

    model = tiny_llama(vocab_size=256)
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    assert lora_parameters(model, 4) == sum(4 * (m.in_features + m.out_features) for m in linears) > 0


@pytest.mark.parametrize("lengths, on_gpu, wanted", [
    ([15] * 100 + [45], True, True),        # Instacart's product names: the longest is 3x the mean
    ([512] * 100, True, False),             # every example as long as the longest: nothing to save
    ([322] * 100 + [512], True, False),     # whole dialogues: the longest 1.6x the mean
    ([15] * 100 + [45], False, False),      # on CPU packing is slower
])
def test_auto_padding_free_packs_short_examples_on_a_gpu(lengths, on_gpu, wanted):
    assert wants_padding_free("auto", lengths, on_gpu, batch_tokens=4096) is wanted
    assert wants_padding_free("auto", lengths, on_gpu, batch_tokens=0) is False  # no token budget: no growth to win
    assert wants_padding_free(True, [512], False, 0) and not wants_padding_free(False, lengths, True, 4096)


def test_the_cpu_plan_is_the_tasks_own_step(tokenizer):
    """No model needed: a config and counts. On CPU the task's batch and rate, padded, nothing else switched on."""
    from transformers import LlamaConfig

    task_train, train = settings()
    plan = plan_step(task_train, train, [15] * 3600, 4, ModelSize(LlamaConfig(), 7 * LARGE_MODEL, 40_000_000),
                     Device(on_gpu=False))
    assert (plan.batch, plan.batch_per_process, plan.accumulation) == (task_train.batch_size, task_train.batch_size, 1)
    assert plan.learning_rate == task_train.learning_rate and plan.memory is None
    assert not (plan.padding_free or plan.gradient_checkpointing or plan.compile)
    assert plan.describe() == (f"plan: {task_train.batch_size} examples an update; learning rate "
                               f"{task_train.learning_rate:.3g}; padded batches; activation checkpointing off; not compiled")


def test_a_gpu_plan_grows_packs_scales_compiles_and_checks_the_memory():
    """A 7B shape's Instacart epoch on a GPU with 80 GiB free, shared by 2 processes: the batch grows to the token
    budget at the mean length (packed: the longest is 3x the mean), the rate by the square root of the growth."""
    from transformers import LlamaConfig

    task_train, train = settings(gpu_batch_tokens=8192, gpu_min_steps=100)
    lengths = [15] * 30_000 + [45]
    plan = plan_step(task_train, train, lengths, 4, ModelSize(LlamaConfig(), 7 * LARGE_MODEL, 40_000_000),
                     Device(on_gpu=True, processes=2, free_bytes=80 * GIB))
    assert plan.padding_free and plan.compile and plan.memory is not None
    assert plan.batch == 300 and plan.batch_per_process == 150 and plan.accumulation == 1  # 30,001 / 100 steps
    assert plan.learning_rate == pytest.approx(task_train.learning_rate * (300 / task_train.batch_size) ** 0.5)
    assert not plan.gradient_checkpointing  # 150 x 15 x 1.25 tokens a process: a few GiB of activations
    assert "grown from the task's 16 on the GPU" in plan.describe() and "2 processes x 150 x 1 steps" in plan.describe()
    low = plan_step(task_train, params.replace(train, gradient_checkpointing=True), lengths, 4,
                    ModelSize(LlamaConfig(), 7 * LARGE_MODEL, 40_000_000), Device(True, 1, 80 * GIB))
    assert low.gradient_checkpointing and low.batch == task_train.batch_size * task_train.max_length // 15


def test_a_head_grows_its_batch_on_a_gpu_but_never_packs_rows():
    """A classification head reads each row's last token: the GPU's grown batch applies, packing does not, and asking
    for it is refused with the params' words."""
    from transformers import LlamaConfig

    task_train, train = settings(gpu_batch_tokens=8192, gpu_min_steps=100)
    lengths, size, gpu = [15] * 30_000 + [45], ModelSize(LlamaConfig(), 7 * LARGE_MODEL, 40_000_000), Device(True, 1, 80 * GIB)
    plan = plan_step(task_train, train, lengths, 0, size, gpu, packable=False)
    assert not plan.padding_free and plan.batch == 8192 // 45  # padded: the budget at the longest example
    with pytest.raises(PipelineError, match="train.padding_free is true.*set train.padding_free to auto or false"):
        plan_step(task_train, params.replace(train, padding_free=True), lengths, 0, size, gpu, packable=False)


@pytest.mark.parametrize("arch", ["llama", "falcon"])
def test_compiled_blocks_compute_the_same_loss_and_adapter_gradients(arch):
    """Every decoder block compiled (aot_eager here: the graph capture without code generation), the
    same loss and LoRA gradients as the eager model on batches of two lengths, and the same names to save."""
    import torch

    from tests.conftest import tiny_falcon, tiny_llama

    build = {"llama": tiny_llama, "falcon": tiny_falcon}[arch]
    lora = params.replace(params.read("lora"), r=4, alpha=8, target_modules="all-linear")
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = methods.trainable(build(vocab_size=256), "qlora", lora, False, "").model
        names = sorted(model.state_dict())
        blocks = compile_blocks(model, backend="aot_eager") if compiled else 0
        model.train()
        losses = []
        for length in (7, 11):
            ids = torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(length))
            losses.append(model(input_ids=ids, labels=ids).loss)
            losses[-1].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        runs.append((torch.stack(losses).detach(), grads, blocks, names, sorted(model.state_dict())))
    (eager_loss, eager_grads, _, _, _), (loss, grads, blocks, before, after) = runs
    assert blocks == 2
    assert before == after
    torch.testing.assert_close(loss, eager_loss)  # fp32 defaults: aot_eager runs the same ATen kernels, decomposed
    assert grads.keys() == eager_grads.keys()
    for name in grads:
        # decompositions reorder a few fp32 sums; relative to each gradient's own scale, as it varies by layer
        torch.testing.assert_close(grads[name], eager_grads[name], rtol=1e-5,
                                   atol=1e-5 * float(eager_grads[name].abs().max()))


def test_parameter_count_of_a_4bit_model_is_its_dense_count(tmp_path):
    """bitsandbytes packs two 4-bit weights per element: the count must not halve the model."""
    from finetune.model import base_model
    from tests.conftest import tiny_llama

    dense = tiny_llama(vocab_size=256)
    dense.save_pretrained(tmp_path)
    quantized = base_model.load_model(str(tmp_path), "main", base_model.quantization_config(True, "nf4", True))
    assert sum(p.numel() for p in quantized.parameters()) < parameter_count(dense)
    assert parameter_count(quantized) == parameter_count(dense) == sum(p.numel() for p in dense.parameters())


def test_an_adapter_trains_alone_and_frozen_weights_keep_their_dtype():
    """Frozen weights stay in their dtype (no fp32 copies of the embeddings and head); only LoRA learns."""
    import torch

    from tests.conftest import tiny_llama

    model = tiny_llama(vocab_size=256).to(torch.bfloat16)
    lora = params.replace(params.read("lora"), r=4, alpha=8, target_modules="all-linear")
    trained = methods.trainable(model, "lora", lora, True, "")
    peft_model, modules, checkpointing = trained.model, trained.target_modules, True
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert peft_model.get_input_embeddings().weight.dtype == torch.bfloat16
    inner = peft_model.base_model.model
    new_name = hasattr(type(inner), "is_activation_checkpointing")  # is_gradient_checkpointing before transformers 5.2x
    assert checkpointing and (inner.is_activation_checkpointing if new_name else inner.is_gradient_checkpointing)
    assert set(modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_train_result_counts_a_4bit_model_at_its_dense_size(tmp_path, tokenizer):
    """metrics/train.json's total_parameters: the dense base plus the adapter, whether the base is 4-bit or not."""
    from finetune import kinds
    from finetune.model import base_model
    from finetune.train.training import train_model
    from tests.conftest import tiny_llama

    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(tmp_path / "base")
    dense_size = parameter_count(tiny_llama(vocab_size=len(tokenizer)))
    task = params.read_task(name="instacart")
    task_train = params.replace(task.train, batch_size=2)
    examples = kinds.of(task).encode(tokenizer, [{"id": str(i), "text": f"item {i}", "label": "snacks"} for i in range(2)],
                                    task)
    model = base_model.load_model(str(tmp_path / "base"), "main", base_model.quantization_config(True, "nf4", True))
    _, result, _ = train_model(model, tokenizer, examples, [], task_train, params.read("train"), params.read("lora"),
                              tmp_path / "work", callbacks=[])
    assert result.steps == 1 and result.trainable_parameters > 0
    assert result.total_parameters == dense_size + result.trainable_parameters



def test_a_grown_batch_trains_at_the_square_root_of_its_growth_times_the_tasks_rate():
    assert scaled_learning_rate(1e-3, 64, 16, "sqrt") == pytest.approx(2e-3)
    assert scaled_learning_rate(1e-3, 269, 16, "sqrt") == pytest.approx(1e-3 * (269 / 16) ** 0.5)
    assert scaled_learning_rate(1e-3, 16, 16, "sqrt") == 1e-3  # CPU, or a batch the GPU did not grow
    assert scaled_learning_rate(1e-3, 269, 16, "none") == 1e-3


def test_an_unknown_learning_rate_scaling_is_refused_with_its_choices():
    with pytest.raises(PipelineError, match="gpu_lr_scaling"):
        params.replace(params.read("train"), gpu_lr_scaling="linear")


def test_lora_layers_that_keep_their_bf16_input_under_autocast_give_the_same_loss_and_gradients():
    from peft import LoraConfig, get_peft_model

    from tests.conftest import tiny_llama

    model = get_peft_model(tiny_llama(64).to(torch.bfloat16),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()   # fp32 adapter on a bf16 base, as train_qlora holds them
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))

    def step(uncast: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16), lora_inputs_uncast(model, uncast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    (cast_loss, cast_grads), (uncast_loss, uncast_grads) = step(False), step(True)
    assert torch.equal(cast_loss, uncast_loss)
    assert all(torch.equal(a, b) for a, b in zip(cast_grads, uncast_grads))
    assert any(g.abs().sum() > 0 for g in uncast_grads)
    lora_layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert lora_layers and all(m.cast_input_dtype_enabled for m in lora_layers)  # restored on exit
    with lora_inputs_uncast(model, False):
        assert all(m.cast_input_dtype_enabled for m in lora_layers)
