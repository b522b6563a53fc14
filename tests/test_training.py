"""The training settings a GPU picks by itself: batch growth, activation checkpointing, compiled blocks."""


import pytest

from finetune import params
from finetune.errors import PipelineError
from finetune import methods
from finetune.training import (LARGE_MODEL, compile_blocks, device_batch_size, parameter_count, wants_checkpointing,
                               wants_compile)


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


@pytest.mark.parametrize("key, wants", [("gradient_checkpointing", wants_checkpointing), ("compile", wants_compile)])
def test_auto_settings_switch_on_only_for_a_large_model_on_a_gpu(key, wants):
    assert wants("auto", LARGE_MODEL, on_gpu=True)
    assert not wants("auto", LARGE_MODEL - 1, on_gpu=True)
    assert not wants("auto", 10 * LARGE_MODEL, on_gpu=False)
    assert wants(True, 1, on_gpu=False)
    assert not wants(False, 10 * LARGE_MODEL, on_gpu=True)
    with pytest.raises(PipelineError, match=f"train.{key} is 'yes'; expected true, false or auto"):
        wants("yes", 1, on_gpu=True)


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
    from finetune import base_model
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
    from finetune import base_model
    from finetune.training import encode_split, train_model
    from tests.conftest import tiny_llama

    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(tmp_path / "base")
    dense_size = parameter_count(tiny_llama(vocab_size=len(tokenizer)))
    task = params.read_task(name="instacart")
    task_train = params.replace(task.train, batch_size=2)
    examples = encode_split(tokenizer, [{"id": str(i), "text": f"item {i}", "label": "snacks"} for i in range(2)], task)
    model = base_model.load_model(str(tmp_path / "base"), "main", base_model.quantization_config(True, "nf4", True))
    _, result = train_model(model, tokenizer, examples, [], task_train, params.read("train"), params.read("lora"),
                              tmp_path / "work", callbacks=[])
    assert result.steps == 1 and result.trainable_parameters > 0
    assert result.total_parameters == dense_size + result.trainable_parameters


def _examples(tokenizer, kind: str, n: int = 12) -> tuple[list[dict], object]:
    from finetune.training import encode_split

    if kind == "classification":
        task = params.read_task(name="instacart")
        rows = [{"id": str(i), "text": f"item {i} kind {i % 3}", "label": ["produce", "snacks", "frozen"][i % 3]}
                for i in range(n)]
    else:
        import dataclasses

        chitchat = params.read_task(name="chitchat")
        task = dataclasses.replace(chitchat, train=params.replace(chitchat.train, max_length=64))
        rows = [{"id": str(i), "messages": [{"role": "user", "content": f"hello number {i}"},
                                            {"role": "assistant", "content": f"hi there {i}"}]} for i in range(n)]
    return encode_split(tokenizer, rows, task), task


def _losses(log_history) -> list[float]:
    return [h["loss"] for h in log_history if "loss" in h]


@pytest.mark.parametrize("arch", ["llama", "falcon"])
def test_sft_trainer_steps_lose_what_the_plain_trainer_loses_on_the_same_batches(arch, tmp_path, tokenizer):
    """The first steps under TRL's SFTTrainer match the transformers Trainer's (fp32: 1e-5 relative)."""
    import dataclasses

    import torch
    from transformers import Trainer, TrainingArguments

    from finetune.batching import AnswerOnlyCollator
    from finetune.training import build_trainer
    from tests.conftest import lora_params, tiny_falcon, tiny_llama

    build = {"llama": tiny_llama, "falcon": tiny_falcon}[arch]
    build(len(tokenizer)).save_pretrained(tmp_path / "base")  # loaded in 4-bit, where TRL casts LoRA to bf16
    examples, task = _examples(tokenizer, "classification", n=16)
    task_train = params.replace(task.train, batch_size=4, learning_rate=5e-3)
    train = params.replace(params.read("train"), logging_steps=1)
    lora = lora_params(r=4, alpha=8)
    runs = []
    for plain in (False, True):
        base = methods.load_base(str(tmp_path / "base"), "main", "qlora", params.read("quantization"), dense=False)
        torch.manual_seed(0)
        trained = methods.trainable(base, "qlora", lora, False, "")
        before = {n: p.detach().clone() for n, p in trained.model.named_parameters() if p.requires_grad}
        trainer = build_trainer(trained, tokenizer, examples, [], task_train, train, lora, tmp_path / str(plain), [])
        after = {n: p.detach() for n, p in trained.model.named_parameters() if p.requires_grad}
        assert before.keys() == after.keys()  # TRL's bf16 round trip undone: the adapter starts where PEFT put it
        assert all(torch.equal(before[n], after[n]) and after[n].dtype == torch.float32 for n in before)
        if plain:  # the same arguments, as a plain Trainer takes them, on the same model and batches
            fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
            args = TrainingArguments(**{k: v for k, v in trainer.args.to_dict().items() if k in fields
                                        and k not in ("logging_dir",)} | {"output_dir": str(tmp_path / "plain")})
            trainer = Trainer(model=trained.model, args=args, train_dataset=examples,
                              data_collator=AnswerOnlyCollator(tokenizer.pad_token_id))
        assert all(p.dtype == torch.float32 for p in trained.model.parameters() if p.requires_grad)
        trainer.train()
        runs.append(_losses(trainer.state.log_history))
        assert all(p.dtype == torch.float32 for p in trained.model.parameters() if p.requires_grad)
    sft, plain = runs
    assert len(sft) == len(plain) == 4 and len(set(sft)) == 4  # four different batches
    assert sft == pytest.approx(plain, rel=1e-5)


@pytest.mark.parametrize("padding_free", [False, True])
@pytest.mark.parametrize("kind", ["classification", "generation"])
def test_the_trained_tokens_are_the_answer_only(kind, padding_free, tmp_path, tokenizer):
    """Decode the tokens a batch trains on: the label and its end token, or the assistant's turn and its end."""
    from finetune.training import build_trainer
    from tests.conftest import lora_params, tiny_llama

    examples, task = _examples(tokenizer, kind, n=2)
    train = params.replace(params.read("train"), padding_free=padding_free)
    trained = methods.trainable(tiny_llama(len(tokenizer)), "qlora", lora_params(r=4, alpha=8), False, "")
    trainer = build_trainer(trained, tokenizer, examples[:1], [], params.replace(task.train, batch_size=1), train,
                            lora_params(), tmp_path, [])
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"][0]
    trained_ids = labels[labels != -100].tolist()
    # The model predicts token t+1 at position t: the labels' trained positions are the answer's tokens.
    text = tokenizer.decode(trained_ids)
    end = tokenizer.decode([tokenizer.eos_token_id]) if kind == "classification" else "<|im_end|>"
    expected = " produce" if kind == "classification" else "hi there 0"
    assert text.startswith(expected) and text.endswith(end), text
    assert "Product:" not in text and "hello" not in text


def test_padding_free_batches_lose_what_padded_batches_lose(tmp_path, tokenizer):
    """TRL's padding-free collator (one row, positions restarting per example) and the answer-only collator
    compute the same loss on the same examples."""
    import torch

    from finetune.training import build_trainer
    from tests.conftest import lora_params, tiny_llama

    examples, task = _examples(tokenizer, "generation", n=4)
    losses = []
    for padding_free in (False, True):
        trained = methods.trainable(tiny_llama(len(tokenizer)), "qlora", lora_params(r=4, alpha=8), False, "")
        train = params.replace(params.read("train"), padding_free=padding_free)
        trainer = build_trainer(trained, tokenizer, examples, [], params.replace(task.train, batch_size=4), train,
                                lora_params(), tmp_path / str(padding_free), [])
        batch = next(iter(trainer.get_train_dataloader()))
        assert ("position_ids" in batch and "attention_mask" not in batch) is padding_free
        with torch.no_grad():
            losses.append(float(trainer.compute_loss(trained.model.train(), dict(batch))))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
