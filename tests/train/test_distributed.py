"""More than one process: the batch per update kept, the launch command, and 2 processes training as 1 does (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune import param_schemas, params
from finetune.errors import PipelineError
from finetune.model import methods
from finetune.model.base_model import compute_dtype
from finetune.train import distributed
from finetune.train.batching import length_batches
from tests import distributed_training
from tests.conftest import ROOT

DDP = param_schemas.DistributedParams(processes=2, machines=1, strategy="ddp")


def test_more_processes_share_the_batch_per_update():
    assert distributed.per_process_batch(16, 1, 1) == (16, 1)
    assert distributed.per_process_batch(16, 1, 2) == (8, 1)
    assert distributed.per_process_batch(16, 2, 8) == (2, 2)
    assert distributed.per_process_batch(3, 2, 2) == (3, 1)  # the batch does not divide: the accumulation does
    with pytest.raises(PipelineError, match="batch of 5 x gradient_accumulation 3 .* 2 processes: make"):
        distributed.per_process_batch(5, 3, 2)


def test_one_process_runs_the_stage_itself():
    one = params.replace(DDP, processes=1)
    assert distributed.relaunch(one) is False
    assert distributed.map_batches(lambda b: sum(b), [[1, 2], [3], [4, 5]]) == [3, 3, 9]


def test_batches_are_of_similar_length_and_keep_ties_in_order():
    assert length_batches([5, 1, 3, 1, 9], 2) == [[1, 3], [2, 0], [4]]


def test_the_launch_command_takes_the_strategy_config_and_the_counts():
    cmd = distributed.launch_command("stages.train_qlora", ["data/split", "models/adapter"],
                                     params.replace(DDP, processes=4))
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    options = dict(zip(cmd[3:-4:2], cmd[4:-4:2]))
    assert options["--config_file"] == "configs/accelerate/ddp.yaml"
    assert (options["--num_processes"], options["--num_machines"], options["--machine_rank"]) == ("4", "1", "0")
    assert options["--main_process_ip"] == "127.0.0.1" and int(options["--main_process_port"]) > 0
    assert cmd[-4:] == ["-m", "stages.train_qlora", "data/split", "models/adapter"]
    fsdp = distributed.launch_command("stages.train_qlora", [], params.replace(DDP, strategy="fsdp"))
    assert fsdp[fsdp.index("--config_file") + 1] == "configs/accelerate/fsdp.yaml"


def test_both_accelerate_configs_are_in_the_repo():
    import yaml

    for strategy, kind in (("ddp", "MULTI_GPU"), ("fsdp", "FSDP")):
        config = yaml.safe_load((ROOT / "configs/accelerate" / f"{strategy}.yaml").read_text())
        assert config["distributed_type"] == kind and config["mixed_precision"] == "no"


def test_more_machines_need_the_main_address_and_this_machines_rank(monkeypatch):
    two = params.replace(DDP, machines=2)
    monkeypatch.delenv(distributed.MAIN_ADDRESS_ENV, raising=False)
    with pytest.raises(PipelineError, match="FINETUNE_MAIN_ADDRESS=host:port .* FINETUNE_MACHINE_RANK=0..1"):
        distributed.launch_command("stages.train_qlora", [], two)
    monkeypatch.setenv(distributed.MAIN_ADDRESS_ENV, "10.0.0.1:29500")
    monkeypatch.setenv(distributed.MACHINE_RANK_ENV, "1")
    cmd = distributed.launch_command("stages.train_qlora", [], two)
    options = dict(zip(cmd[3:-2:2], cmd[4:-2:2]))
    assert (options["--num_processes"], options["--num_machines"], options["--machine_rank"]) == ("4", "2", "1")
    assert (options["--main_process_ip"], options["--main_process_port"]) == ("10.0.0.1", "29500")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine runs FSDP")
def test_a_progress_bar_left_open_by_the_launched_processes_is_ended_before_the_error_line(tmp_path, capfd):
    """A rank fails while rank 0 draws a bar ("\\r", no newline): the error printed next starts its own line."""
    draws_a_bar = [sys.executable, "-c", "import sys; sys.stderr.write('Loading weights:  50%\\r'); sys.exit(1)"]
    assert distributed._run_forwarding(draws_a_bar, dict(os.environ), tmp_path) == 1
    assert capfd.readouterr().err == "Loading weights:  50%\r\n"


def test_fsdp_without_a_gpu_is_refused_not_run_as_ddp():
    with pytest.raises(PipelineError, match="strategy is fsdp but this machine has no GPU"):
        distributed.check(params.replace(DDP, strategy="fsdp"))


def test_a_base_sharded_by_fsdp_stores_its_4bit_bytes_in_the_compute_dtype(tmp_path, tokenizer):
    """FSDP shards floating-point tensors only: stored as uint8 the 4-bit weights train with loss 0 (PEFT's guide)."""
    from bitsandbytes.functional import dequantize_4bit
    from tests.conftest import tiny_llama

    quant = params.read("quantization", ROOT / "params.yaml")
    assert methods.quantization("qlora", quant, sharded=True).bnb_4bit_quant_storage == compute_dtype()
    tiny_llama(len(tokenizer)).save_pretrained(tmp_path)
    layers = {}
    for sharded in (False, True):
        model = methods.load_base(str(tmp_path), "main", "qlora", quant, dense=False, sharded=sharded)
        layer = model.model.layers[0].self_attn.q_proj
        layers[sharded] = (layer.weight.dtype, dequantize_4bit(layer.weight.data, layer.weight.quant_state))
    assert layers[False][0] == torch.uint8 and layers[True][0] == compute_dtype()
    assert torch.equal(layers[False][1], layers[True][1])  # the same weights, only stored differently


def run_two_processes(module: str, args: list[str], cwd=ROOT) -> subprocess.CompletedProcess:
    """`python -m module args` under accelerate launch with 2 CPU processes, as the stages launch themselves."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(distributed.launch_command(module, args, DDP), cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


SETTINGS = [("qlora", 8, 1), ("qlora", 3, 2), ("full", 8, 1)]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """Every setting trained by 2 processes under one accelerate launch (each launch imports the libraries twice)."""
    out = tmp_path_factory.mktemp("two_processes")
    run_two_processes("tests.distributed_training", [str(out), *(":".join(map(str, s)) for s in SETTINGS)])
    return out


@pytest.mark.parametrize("method, batch, accumulation", SETTINGS)
def test_two_processes_train_as_one_does_at_the_same_batch_per_update(two_processes, tmp_path, method, batch,
                                                                      accumulation):
    """DDP over gloo: the same loss at every step within 1e-4, the same weights within 1e-5.

    FSDP does not run on CPU (accelerate 1.15 never turns a gloo process group into FSDP), so full
    fine-tuning is checked here under DDP; FSDP is measured on GPUs (benchmarks/README.md)."""
    two_dir = two_processes / distributed_training.folder_name(method, batch, accumulation)
    distributed_training.train(tmp_path / "one", method, batch, accumulation)
    one, two = (json.loads((folder / "result.json").read_text()) for folder in (tmp_path / "one", two_dir))
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["batch_size"] == (batch // 2 if batch % 2 == 0 else batch)
    assert one["steps"] == two["steps"] == len(one["losses"]) == len(two["losses"])
    assert max(abs(a - b) for a, b in zip(one["losses"], two["losses"])) < 1e-4
    w1, w2 = (torch.load(folder / "weights.pt") for folder in (tmp_path / "one", two_dir))
    assert w1.keys() == w2.keys() and w1
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5
