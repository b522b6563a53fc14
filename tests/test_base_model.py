import contextlib
import os
import subprocess
import sys

import pytest

from finetune import base_model
from finetune.errors import PipelineError
from tests.conftest import ROOT


def test_hub_model_offline_is_a_one_line_error_that_says_what_to_do():
    code = ("from finetune import base_model\n"
            "base_model.load_model('tiiuae/falcon-7b', 'main')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", f"from finetune.stage import run\nrun(lambda: exec({code!r}))"],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: cannot load base model 'tiiuae/falcon-7b' at revision 'main'")
    assert "hf download tiiuae/falcon-7b --revision main" in message


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="has no config.json"):
        base_model.load_tokenizer(str(tmp_path / "models" / "nothing"), "main")


def test_identity_is_a_file_hash_for_local_models_and_id_plus_revision_for_hub_models(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    first = base_model.identity(str(folder), "main")
    (folder / "config.json").write_text('{"changed": true}')
    assert base_model.identity(str(folder), "main")["sha256"] != first["sha256"]
    assert base_model.identity("meta-llama/Llama-2-7b-hf", "abc123") == \
        {"name": "meta-llama/Llama-2-7b-hf", "revision": "abc123"}


def test_the_embedded_model_is_a_standard_folder():
    folder = ROOT / base_model.EMBEDDED_DIR
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert base_model.export_embedded(folder) == folder  # idempotent: nothing to do the second time


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


def test_dense_cpu_copy_computes_what_the_4bit_layers_compute(tmp_path):
    """train_qlora and evaluate dequantize the NF4 weights once on CPU: same loss, same adapter gradients."""
    import bitsandbytes as bnb
    import torch
    from peft import get_peft_model

    from finetune.adapters import lora_config
    from tests.conftest import tiny_llama

    tiny_llama(vocab_size=256).save_pretrained(tmp_path)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    runs = []
    for dense in (False, True):
        model = base_model.load_model(str(tmp_path), "main", base_model.quantization_config(True, "nf4", True))
        if dense:
            model = base_model.dense_cpu_copy(model)
            assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
        model = get_peft_model(model, lora_config(model, 4, 8, 0.0, "all-linear"))
        torch.manual_seed(1)
        for name, p in sorted(model.named_parameters()):
            if p.requires_grad:  # a non-zero adapter, so that its path counts
                torch.nn.init.normal_(p, std=0.05)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        runs.append((loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (loss_4bit, grads_4bit), (loss_dense, grads_dense) = runs
    assert loss_dense == pytest.approx(loss_4bit, abs=1e-5)
    assert grads_dense.keys() == grads_4bit.keys() and grads_dense
    for name, grad in grads_4bit.items():
        assert torch.allclose(grads_dense[name], grad, atol=1e-6, rtol=1e-4), name


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
    assert loss == pytest.approx(plain_loss, abs=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6)
    with base_model.key_value_heads_repeated(tiny_llama(vocab_size=256)) as changed:
        assert changed == 0
