"""Merging the adapter into its base: both choices, checked against the adapter on the 4-bit base."""

import json
import subprocess
import sys

import pytest
import torch

from finetune.deliver.merge import merged_model, merged_run_info, save_merged
from finetune.deliver.trained import load_trained, read_run
from finetune.errors import PipelineError
from finetune.model import base_model
from tests.deliver.conftest import make_adapter

IDS = torch.randint(0, 49152, (2, 10), generator=torch.Generator().manual_seed(5))

# A folder saved by save_merged must load with transformers alone: no peft, no code of this project.
CLEAN_LOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    logits = model(input_ids=torch.tensor(json.loads(sys.argv[2]))).logits
print(json.dumps({"logits": logits.tolist(), "peft": "peft" in sys.modules,
                  "project": any(m == "finetune" or m.startswith("finetune.") for m in sys.modules)}))
"""


@pytest.fixture(scope="module", params=["llama", "falcon"])
def adapter(request, tmp_path_factory, tokenizer):
    return make_adapter(tmp_path_factory.mktemp(f"merge_{request.param}"), tokenizer, arch=request.param)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def test_merged_into_dequantized_weights_is_the_adapter_on_the_4bit_base(adapter):
    _, on_4bit, _ = load_trained(adapter)
    expected = logits(on_4bit)
    merged = merged_model(read_run(adapter), "dequantized")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # W + BA in fp32 against W x + B(A x): the same sums in another order, ulps on logits of ~1
    torch.testing.assert_close(logits(merged), expected, rtol=1e-4, atol=1e-4)


def test_merged_into_original_weights_differs_by_the_quantization_error_only(adapter):
    _, on_4bit, _ = load_trained(adapter)
    expected = logits(on_4bit)
    merged = logits(merged_model(read_run(adapter), "original"))
    gap = (merged - expected).abs().max().item()
    assert 1e-4 < gap < 0.5 * expected.abs().max().item()  # NF4 rounding moves the logits, but not to noise


def test_the_merged_folder_loads_without_peft_or_this_project(adapter, tmp_path, tokenizer):
    run = read_run(adapter)
    model = merged_model(run, "dequantized")
    expected = logits(model)
    dest = save_merged(model, base_model.load_tokenizer(str(adapter), "main"), tmp_path / "merged",
                       merged_run_info(run, "dequantized", model))
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "run.json"} <= \
        {p.name for p in dest.iterdir()}
    config = json.loads((dest / "config.json").read_text())
    assert "quantization_config" not in config
    assert json.loads((dest / "run.json").read_text())["merge"]["into"] == "dequantized"
    proc = subprocess.run([sys.executable, "-c", CLEAN_LOAD, str(dest), json.dumps(IDS.tolist())],
                          capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["peft"] is False and out["project"] is False
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, rtol=1e-5, atol=1e-5)  # the same fp32 weights


def test_a_changed_base_is_a_clear_error(tmp_path, tokenizer):
    adapter = make_adapter(tmp_path, tokenizer)
    (tmp_path / "base" / "config.json").write_text((tmp_path / "base" / "config.json").read_text() + " ")
    with pytest.raises(PipelineError, match="has changed since .* was trained on it"):
        merged_model(read_run(adapter), "original")
