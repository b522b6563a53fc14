import contextlib
import os
import subprocess
import sys

import pytest

from finetune.errors import PipelineError
from finetune.model import base_model
from tests.conftest import ROOT, lora_params


def test_hub_model_offline_is_a_one_line_error_that_says_what_to_do():
    code = ("from finetune.model import base_model\n"
            "base_model.load_model('tiiuae/falcon-7b', 'main')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", f"from finetune.stage import run\nrun(lambda: exec({code!r}))"],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: cannot load base model 'tiiuae/falcon-7b' at revision 'main'")
    assert "hf download tiiuae/falcon-7b --revision main" in message


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="has no tokenizer_config.json"):  # an adapter folder holds a tokenizer only
        base_model.load_tokenizer(str(tmp_path / "models" / "nothing"), "main")
    with pytest.raises(PipelineError, match="has no config.json") as error:
        base_model.load_model(str(tmp_path / "models" / "nothing"), "main")
    assert "queued and --temp experiments see only files git or DVC track, so `dvc add` a folder" in str(error.value)


def test_identity_is_a_file_hash_for_local_models_and_id_plus_revision_for_hub_models(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    first = base_model.identity(str(folder), "main")
    (folder / "config.json").write_text('{"changed": true}')
    assert base_model.identity(str(folder), "main")["sha256"] != first["sha256"]
    assert base_model.identity("meta-llama/Llama-2-7b-hf", "abc123") == \
        {"name": "meta-llama/Llama-2-7b-hf", "revision": "abc123"}


@pytest.mark.parametrize("build", ["llama", "falcon"])
def test_every_linear_layer_is_loaded_in_4bit(tmp_path, build):
    """transformers skips Falcon's FalconLinear when quantizing; load_model must not."""
    import bitsandbytes as bnb

    from tests.conftest import tiny_falcon, tiny_llama

    (tiny_llama if build == "llama" else tiny_falcon)(vocab_size=256).save_pretrained(tmp_path)
    model = base_model.load_model(str(tmp_path), "main", base_model.quantization_config(True, "nf4", True))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and base_model.unquantized_layers(model) == []
    assert layers[0].weight.quant_type == "nf4" and layers[0].weight.compress_statistics  # double quantisation


LOGITS_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}  # fp32 logits of ~0.2 (up to ~1): 100 ulps of margin


def _four_bit_and_dense_runs(path, lora_targets="all-linear", after_copy=lambda model: None):
    """Logits, loss and adapter gradients of the same LoRA model on the 4-bit base and on its dense CPU copy."""
    import torch
    from peft import get_peft_model

    from finetune.model.adapters import lora_config

    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    runs = []
    for dense, targets in ((False, "all-linear"), (True, lora_targets)):
        model = base_model.load_model(str(path), "main", base_model.quantization_config(True, "nf4", True))
        if dense:
            model = base_model.dense_copy(model)
            after_copy(model)
        model = get_peft_model(model, lora_config(model, lora_params(r=4, alpha=8, target_modules=targets)))
        torch.manual_seed(1)
        for name, p in sorted(model.named_parameters()):
            if p.requires_grad:  # a non-zero adapter, so that its path counts
                torch.nn.init.normal_(p, std=0.05)
        # Training mode, as train_qlora runs it: bitsandbytes then dequantizes to fp32 and multiplies on
        # every CPU. In eval mode a CPU with AVX512-BF16 repacks the weights and multiplies in bf16
        # (0.4% off), which made this comparison depend on the processor.
        model.train()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        runs.append((out.logits.detach(), out.loss.item(),
                     {n.replace(".base_layer", ""): p.grad for n, p in model.named_parameters() if p.requires_grad}))
    return runs


def test_dense_copy_computes_what_the_4bit_layers_compute(tmp_path):
    """train_qlora and evaluate dequantize the NF4 weights once on CPU: same logits, loss and adapter gradients."""
    import bitsandbytes as bnb
    import torch

    from tests.conftest import tiny_llama

    tiny_llama(vocab_size=256).save_pretrained(tmp_path)
    dense = base_model.dense_copy(base_model.load_model(str(tmp_path), "main",
                                                            base_model.quantization_config(True, "nf4", True)))
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in dense.modules())
    (logits_4bit, loss_4bit, grads_4bit), (logits_dense, loss_dense, grads_dense) = _four_bit_and_dense_runs(tmp_path)
    # Both paths multiply by the same fp32 weights; only the matmul's summation order may differ
    # (a few ulps, 1.2e-7 each, over 2 layers). A 1% error in one dequantized weight matrix or one
    # adapter left out moves the logits by 1e-3 or more (checked by breaking it once on purpose).
    torch.testing.assert_close(logits_dense, logits_4bit, **LOGITS_TOLERANCE)
    assert loss_dense == pytest.approx(loss_4bit, rel=1e-6)  # fp32 mean of 24 log-softmaxes, ~5.5
    assert grads_dense.keys() == grads_4bit.keys() and grads_dense
    for name, grad in grads_4bit.items():  # relative to each gradient's own scale, which varies by layer
        torch.testing.assert_close(grads_dense[name], grad, rtol=1e-5, atol=1e-5 * float(grad.abs().max())), name


@pytest.mark.parametrize("bug", ["one weight matrix dequantized 1% off", "one layer's adapter left out"])
def test_the_dense_copy_comparison_catches_a_wrong_copy(tmp_path, bug):
    """The tolerances above are tight enough to fail on the bugs they guard against."""
    import torch

    from finetune.model.adapters import linear_layer_names
    from tests.conftest import tiny_llama

    tiny_llama(vocab_size=256).save_pretrained(tmp_path)
    targets, after_copy = "all-linear", lambda model: None
    if bug.startswith("one weight"):
        after_copy = lambda model: model.model.layers[1].mlp.down_proj.weight.data.mul_(1.01)  # noqa: E731
    else:
        targets = [n for n in linear_layer_names(tiny_llama(vocab_size=256)) if n != "q_proj"]
    (logits_4bit, _, _), (logits_dense, _, _) = _four_bit_and_dense_runs(tmp_path, targets, after_copy)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(logits_dense, logits_4bit, **LOGITS_TOLERANCE)


def test_a_gpu_dense_copies_a_small_4bit_model_and_keeps_a_large_one_in_4bit(tmp_path, monkeypatch):
    """On a GPU, bitsandbytes also dequantizes at every training use: a small model (SmolLM2-135M: 0.2 GiB of dense
    bf16 weights) is held dense, a model over the GPU's limit (7B: 12 GiB) keeps its 4-bit layers."""
    import bitsandbytes as bnb
    import torch

    from tests.conftest import tiny_llama

    tiny_llama(vocab_size=256).save_pretrained(tmp_path)
    gpu_limit = base_model.GPU_DENSE_LIMIT_GIB
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the limit a GPU has; the copy itself on CPU
    monkeypatch.setattr(base_model, "compute_dtype", lambda: torch.float32)

    def four_bit_layers(limit_gib: float) -> int:
        monkeypatch.setattr(base_model, "GPU_DENSE_LIMIT_GIB", limit_gib)
        with monkeypatch.context() as m:
            m.setattr(torch.cuda, "is_available", lambda: False)  # loading in 4-bit happens on this CPU
            model = base_model.load_model(str(tmp_path), "main", base_model.quantization_config(True, "nf4", True))
        return sum(isinstance(m, bnb.nn.Linear4bit) for m in base_model.dense_copy(model).modules())

    assert base_model.dense_limit_gib(on_gpu=True) < base_model.dense_limit_gib(on_gpu=False)
    assert four_bit_layers(gpu_limit) == 0
    assert four_bit_layers(1e-6) == 14  # 2 layers x 7 linear layers over a limit of 1 KiB stay 4-bit
    smollm2 = 30 * (576 * (576 + 2 * 192 + 576) + 3 * 576 * 1536) * 2 / 2**30  # its dense bf16 linear weights
    llama_7b = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) * 2 / 2**30
    assert smollm2 < gpu_limit < llama_7b


def test_dense_copy_refuses_weights_repacked_for_bf16_inference(tmp_path):
    """bitsandbytes repacks a 4-bit weight at its first eval-mode forward on an AVX512-BF16 CPU;
    dequantizing the repacked bytes gives wrong weights, so the copy must come first."""
    from tests.conftest import tiny_llama

    tiny_llama(vocab_size=256).save_pretrained(tmp_path)
    model = base_model.load_model(str(tmp_path), "main", base_model.quantization_config(True, "nf4", True))
    model.model.layers[0].self_attn.q_proj.weight.quant_state.packing_format_for_cpu = True  # as the repacking leaves it
    with pytest.raises(RuntimeError, match="before the model's first forward"):
        base_model.dense_copy(model)


def test_repeated_key_value_heads_compute_falcons_attention_and_are_undone():
    """Falcon's one key/value head repeated per query head: the same loss and gradients on a
    left-padded batch, no cache of 71 copies in an evaluation pass, every attention layer as loaded
    again afterwards, and no change to Llama."""
    import torch
    from transformers.models.falcon.modeling_falcon import FalconAttention

    from tests.conftest import tiny_falcon, tiny_llama

    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding, as the collator pads
    labels = ids.masked_fill(mask == 0, -100)
    runs = []
    for repeat in (False, True):
        model = tiny_falcon(vocab_size=256).train()
        with base_model.key_value_heads_repeated(model) if repeat else contextlib.nullcontext(0) as changed:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
        runs.append((changed, loss.item(), {n: p.grad for n, p in model.named_parameters()}))
        assert all(type(m) is FalconAttention and m.num_kv_heads == 1
                   for m in model.modules() if isinstance(m, FalconAttention))
        if repeat:
            with base_model.key_value_heads_repeated(model.eval()):
                assert model(input_ids=ids, attention_mask=mask, labels=labels).past_key_values is None
            assert model.config.use_cache  # as it was
    (_, plain_loss, plain_grads), (changed, loss, grads) = runs
    assert changed == 2
    # Repeating the key/value head changes which fp32 attention kernel runs, so the sums differ in order:
    # a few ulps (1.2e-7 measured on gradients of ~1). A wrong head mapping changes them by O(1).
    assert loss == pytest.approx(plain_loss, rel=1e-6)  # loss ~5.5
    for name, grad in plain_grads.items():  # relative to each gradient's own scale
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5 * float(grad.abs().max()))
    with base_model.key_value_heads_repeated(tiny_llama(vocab_size=256)) as changed:
        assert changed == 0


def test_dense_copy_draws_nothing_from_the_random_generator(tmp_path):
    """The adapter is seeded after the copy (train_model): a copy that drew random numbers would move its init."""
    import torch

    from tests.conftest import tiny_llama

    tiny_llama(vocab_size=256).save_pretrained(tmp_path)
    model = base_model.load_model(str(tmp_path), "main", base_model.quantization_config(True, "nf4", True))
    torch.manual_seed(0)
    base_model.dense_copy(model)
    after_copy = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after_copy, torch.rand(4))
