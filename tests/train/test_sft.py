"""TRL's SFTTrainer as train_qlora runs it: the same losses as the plain Trainer, the answer-only tokens trained,
padding-free batches equal to padded ones."""

import pytest

from finetune import params
from finetune.model import methods
from finetune.train import sft
from finetune.train.training import step_plan


def build_trainer(trained, tokenizer, examples, task_train, train, lora, work_dir):
    """The trainer train_model builds for these examples, from their step plan."""
    plan = step_plan(trained.model, examples, task_train, train, lora)
    return sft.build_trainer(trained, tokenizer, examples, [], plan, train, lora, task_train.epochs, work_dir, [])


def _examples(tokenizer, kind: str, n: int = 12, varied: bool = False) -> tuple[list[dict], object]:
    """`varied`: product names of different lengths."""
    from finetune import kinds

    if kind == "classification":
        task = params.read_task(name="instacart")
        rows = [{"id": str(i), "text": f"item {i} kind {i % 3}" + " fresh" * (3 * i if varied else 0),
                 "label": ["produce", "snacks", "frozen"][i % 3]} for i in range(n)]
    else:
        import dataclasses

        chitchat = params.read_task(name="chitchat")
        task = dataclasses.replace(chitchat, train=params.replace(chitchat.train, max_length=64))
        rows = [{"id": str(i), "messages": [{"role": "user", "content": f"hello number {i}"},
                                            {"role": "assistant", "content": f"hi there {i}"}]} for i in range(n)]
    return kinds.of(task).encode(tokenizer, rows, task), task


def _losses(log_history) -> list[float]:
    return [h["loss"] for h in log_history if "loss" in h]


@pytest.mark.parametrize("arch", ["llama", "falcon"])
def test_sft_trainer_steps_lose_what_the_plain_trainer_loses_on_the_same_batches(arch, tmp_path, tokenizer):
    """The first steps under TRL's SFTTrainer match the transformers Trainer's (fp32: 1e-5 relative)."""
    import dataclasses

    import torch
    from transformers import Trainer, TrainingArguments

    from finetune.train.batching import AnswerOnlyCollator
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
        trainer = build_trainer(trained, tokenizer, examples, task_train, train, lora, tmp_path / str(plain))
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
    from tests.conftest import lora_params, tiny_llama

    examples, task = _examples(tokenizer, kind, n=2)
    train = params.replace(params.read("train"), padding_free=padding_free)
    trained = methods.trainable(tiny_llama(len(tokenizer)), "qlora", lora_params(r=4, alpha=8), False, "")
    trainer = build_trainer(trained, tokenizer, examples[:1], params.replace(task.train, batch_size=1), train,
                            lora_params(), tmp_path)
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

    from tests.conftest import lora_params, tiny_llama

    examples, task = _examples(tokenizer, "generation", n=4)
    losses = []
    for padding_free in (False, True):
        trained = methods.trainable(tiny_llama(len(tokenizer)), "qlora", lora_params(r=4, alpha=8), False, "")
        train = params.replace(params.read("train"), padding_free=padding_free)
        trainer = build_trainer(trained, tokenizer, examples, params.replace(task.train, batch_size=4), train,
                                lora_params(), tmp_path / str(padding_free))
        batch = next(iter(trainer.get_train_dataloader()))
        assert ("position_ids" in batch and "attention_mask" not in batch) is padding_free
        with torch.no_grad():
            losses.append(float(trainer.compute_loss(trained.model.train(), dict(batch))))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize("arch", ["llama", "falcon"])
def test_packed_training_loses_what_padded_training_loses(arch, tmp_path, tokenizer):
    """Three steps on the same examples (the whole split a step, so both orders give the same batches): padding-free
    batches, one row with positions restarting per example and attention kept inside each, train as padded ones do:
    the same loss at every step (fp32, 1e-5 relative) and the same adapter after. Falcon takes the packed rows' mask
    from finetune.train.batching (its own mask ignores the position ids: without it, the first step's loss differs by 2e-3)."""
    import torch

    from finetune.train.training import run_trainer
    from tests.conftest import lora_params, tiny_falcon, tiny_llama

    build = {"llama": tiny_llama, "falcon": tiny_falcon}[arch]
    examples, task = _examples(tokenizer, "classification", n=6, varied=True)
    assert len({len(ex["input_ids"]) for ex in examples}) == 6  # lengths differ: the padded batch has padding
    task_train = params.replace(task.train, batch_size=6, learning_rate=5e-3, epochs=3)
    lora = lora_params(r=4, alpha=8)
    runs = []
    for padding_free in (False, True):
        torch.manual_seed(0)
        trained = methods.trainable(build(len(tokenizer)), "qlora", lora, False, "")
        train = params.replace(params.read("train"), logging_steps=1, padding_free=padding_free)
        plan = step_plan(trained.model, examples, task_train, train, lora)
        trainer = sft.build_trainer(trained, tokenizer, examples, [], plan, train, lora, task_train.epochs,
                                    tmp_path / str(padding_free), [])
        run_trainer(trainer, plan, saving=None, resume_from=None)  # packed rows: their attention kept per example
        runs.append((_losses(trainer.state.log_history),
                     {n: p.detach().clone() for n, p in trained.model.named_parameters() if p.requires_grad}))
    (padded, padded_weights), (packed, packed_weights) = runs
    assert len(padded) == 3 and padded[-1] < padded[0]  # it trained (the first step warms up from a rate of 0)
    assert packed == pytest.approx(padded, rel=1e-5)
    # AdamW's first steps move every weight by about the rate (5e-3) whatever the gradient's size: 1e-5 is rounding
    assert all(torch.allclose(packed_weights[n], padded_weights[n], atol=1e-5) for n in padded_weights)


def test_the_flop_count_walks_the_model_once_and_counts_what_the_trainer_counts(tmp_path, tokenizer, monkeypatch):
    """The Trainer counts a step's FLOPs as 6 x tokens x non-embedding parameters, walking every module for the
    count each step; the pipeline's trainer gives the same numbers from one walk."""
    from transformers import Trainer

    from tests.conftest import lora_params, tiny_llama

    examples, task = _examples(tokenizer, "classification", n=4)
    trained = methods.trainable(tiny_llama(len(tokenizer)), "qlora", lora_params(r=4, alpha=8), False, "")
    trainer = build_trainer(trained, tokenizer, examples, params.replace(task.train, batch_size=2),
                            params.read("train"), lora_params(), tmp_path)
    batches = list(trainer.get_train_dataloader())
    expected = [Trainer.floating_point_ops(trainer, b) for b in batches]
    walks = []
    inner = type(trainer.model.get_base_model())  # PEFT hands num_parameters on to the base model
    counted = inner.num_parameters
    monkeypatch.setattr(inner, "num_parameters",
                        lambda self, *a, **k: walks.append(1) or counted(self, *a, **k))
    assert [trainer.floating_point_ops(b) for b in batches] == expected
    assert len(batches) == 2 and expected[0] > 0 and len(walks) == 1


def test_the_trainer_takes_the_batch_and_rate_of_its_plan(tmp_path, tokenizer):
    import dataclasses

    from tests.conftest import lora_params, tiny_llama

    examples, task = _examples(tokenizer, "classification", n=4)
    trained = methods.trainable(tiny_llama(len(tokenizer)), "qlora", lora_params(r=4, alpha=8), False, "")
    plan = step_plan(trained.model, examples, task.train, params.read("train"), lora_params())
    grown = dataclasses.replace(plan, batch=4, batch_per_process=4, learning_rate=0.0041)  # as a GPU plans it
    trainer = sft.build_trainer(trained, tokenizer, examples, [], grown, params.read("train"), lora_params(),
                                task.train.epochs, tmp_path, [])
    assert (trainer.args.learning_rate, trainer.args.per_device_train_batch_size) == (0.0041, 4)
    assert (plan.learning_rate, plan.batch) == (task.train.learning_rate, task.train.batch_size)  # CPU: the task's
