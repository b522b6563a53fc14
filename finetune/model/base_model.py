"""The base model: a local folder (the embedded SmolLM2 export among them) or a hub id, loaded plain or in 4-bit."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch

from finetune.errors import PipelineError
from finetune.files import sha256_of
from finetune.model.embedded import EMBEDDED_DIR
from finetune.model.folders import is_local

CPU_DENSE_LIMIT_GIB = 4.0  # dequantize a 4-bit model once on CPU when its dense fp32 weights fit in this
GPU_DENSE_LIMIT_GIB = 1.0  # ... and on a GPU when its dense bf16 weights do (a small model: SmolLM2-135M holds 0.2)


def device() -> torch.device:
    """This process's GPU (under accelerate launch, the one of its local rank), or the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def compute_dtype() -> torch.dtype:
    """bf16 on a CUDA GPU that supports it; fp32 elsewhere (bf16 matmuls are ~20x slower on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _source(name: str, revision: str, marker: str = "config.json") -> dict:
    """Arguments for `from_pretrained`: a local folder (holding `marker`), or a hub id at a revision."""
    if is_local(name):
        path = Path(name).expanduser()
        if not (path / marker).is_file():
            hint = ("run `make setup` (or `dvc repro base_model`) to export the embedded model" if path == EMBEDDED_DIR else
                    "point base_model.name at a folder written by save_pretrained (queued and --temp experiments see only "
                    "files git or DVC track, so `dvc add` a folder of your own under models/base)")
            raise PipelineError(f"base model folder '{name}' has no {marker}; {hint}")
        return {"pretrained_model_name_or_path": str(path)}
    return {"pretrained_model_name_or_path": name, "revision": revision}


def _hub_error(name: str, revision: str, error: Exception) -> PipelineError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return PipelineError(
        f"cannot load base model '{name}' at revision '{revision}' from the Hugging Face Hub ({first}); "
        f"on a connected machine run `hf download {name} --revision {revision} --local-dir models/base/{name.split('/')[-1]}` "
        f"and set base_model.name to that folder")


def identity(name: str, revision: str) -> dict:
    """What pins the base model: a hash of a local folder's files, or the hub id and revision."""
    if is_local(name):
        files = [p for p in Path(name).expanduser().rglob("*") if p.is_file()]
        return {"name": name, "sha256": sha256_of(files)}
    return {"name": name, "revision": revision}


def load_tokenizer(name: str, revision: str):
    """The base model's tokenizer, with a pad token (the end token where none is set)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(**_source(name, revision, "tokenizer_config.json"))
    except OSError as e:
        raise _hub_error(name, revision, e) from None
    if tokenizer.pad_token is None:
        # Padding is masked by attention mask, never by token id, so sharing the end token is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(load_in_4bit: bool, quant_type: str, double_quant: bool, sharded: bool = False):
    """bitsandbytes 4-bit config, or None for full-precision weights.

    `sharded` (FSDP): the packed 4-bit bytes are stored as the compute dtype, since FSDP shards only floating-point
    tensors (with the default uint8 storage FSDP-QLoRA trains with a loss of 0 and NaN gradients)."""
    from transformers import BitsAndBytesConfig

    if not load_in_4bit:
        return None
    storage = {"bnb_4bit_quant_storage": compute_dtype()} if sharded else {}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype(), **storage)


@contextlib.contextmanager
def _plain_linear_layers():
    """Build Falcon with plain `nn.Linear` layers while loading.

    transformers (5.17 to 5.23 at least) swaps in 4-bit layers only where `type(module) is nn.Linear`,
    so Falcon's `FalconLinear` subclass stayed in bf16: "QLoRA" Falcon-7B silently held 13.8 GB of
    full-precision weights. FalconLinear computes exactly what nn.Linear does.
    """
    from transformers.models.falcon import modeling_falcon

    original = modeling_falcon.FalconLinear
    modeling_falcon.FalconLinear = torch.nn.Linear
    try:
        yield
    finally:
        modeling_falcon.FalconLinear = original


@contextlib.contextmanager
def _new_head_quiet(new_head: bool):
    """transformers reports a new head's weights as missing from the checkpoint, as if something were wrong: they are
    made here on purpose (and trained, or loaded from the adapter)."""
    if not new_head:
        yield
        return
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


@functools.cache
def _falcon_attention_with_repeated_key_value():
    from transformers.models.falcon.modeling_falcon import FalconAttention

    class FalconAttentionRepeatedKV(FalconAttention):
        """FalconAttention that hands every query head its own copy of the one key/value head."""

        def _split_heads(self, fused_qkv):
            query, key, value = super()._split_heads(fused_qkv)
            return query, key.expand_as(query), value.expand_as(query)

    return FalconAttentionRepeatedKV


@contextlib.contextmanager
def key_value_heads_repeated(model):
    """Inside this block, Falcon-7B's multi-query attention gives each query head a copy of its key/value head.

    Falcon-7B hands SDPA 71 query heads, one key/value head and a mask it always builds. Neither the
    flash nor the memory-efficient kernel takes heads that differ, so PyTorch falls back to its math
    kernel, in fp32 with the whole score matrix in memory, a large share of a QLoRA step at 512
    tokens. With the key and value repeated (2 x 64 values per token and head, no
    weights), the memory-efficient kernel computes the same attention. Meant for training: a cache
    would hold 71 copies, so the model builds none inside the block (the Trainer's validation pass
    would), and the layers are as loaded again on leaving. Yields how many layers it changed (0 for
    any other architecture).
    """
    from transformers.models.falcon.modeling_falcon import FalconAttention

    repeated = _falcon_attention_with_repeated_key_value()
    shared = [m for m in model.modules()
              if type(m) is FalconAttention and m.multi_query and not m.new_decoder_architecture and m.num_kv_heads == 1]
    use_cache = model.config.use_cache
    for module in shared:
        module.__class__, module.num_kv_heads = repeated, module.num_heads
    if shared:
        model.config.use_cache = False
    try:
        yield len(shared)
    finally:
        model.config.use_cache = use_cache
        for module in shared:
            module.__class__, module.num_kv_heads = FalconAttention, 1


def output_layer(model):
    """The layer that turns the last hidden states into the model's output: the LM head, or a classification head."""
    return model.get_output_embeddings() or getattr(model, "score", None)


def unquantized_layers(model) -> list[str]:
    """Names of linear layers (the output head aside) that are not 4-bit."""
    import bitsandbytes as bnb

    head = output_layer(model)
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head and not isinstance(module, bnb.nn.Linear4bit)]


def is_classifier_folder(name: str) -> bool:
    """A local model folder saved with a classification head (its config names a ...ForSequenceClassification)."""
    config = Path(name).expanduser() / "config.json"
    if not is_local(name) or not config.is_file():
        return False
    import json

    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


def load_model(name: str, revision: str, quantization=None, dtype: torch.dtype | None = None, head: dict | None = None):
    """The base model on this machine's device, in 4-bit if `quantization` is given, else in `dtype` (default: the
    compute dtype): a causal LM, or with `head` (the config of a classification head, `finetune.model.head`) the same
    model with that head on its last token, new and untrained. A folder saved with a head loads with it."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    classifier = head is not None or is_classifier_folder(name)
    auto = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    try:
        with _plain_linear_layers(), _new_head_quiet(head is not None):
            model = auto.from_pretrained(
                **_source(name, revision), quantization_config=quantization, dtype=dtype or compute_dtype(),
                device_map={"": device()}, **(head or {}))
    except OSError as e:
        raise _hub_error(name, revision, e) from None
    if quantization is not None and getattr(quantization, "load_in_4bit", False):
        missed = unquantized_layers(model)
        if missed:
            raise PipelineError(f"base model '{name}': {len(missed)} linear layers (e.g. {missed[0]}) were not "
                                f"loaded in 4-bit; set train.method: lora or report this model type")
    model.config.use_cache = False
    _contiguous_head_input(model)
    return model


def dense_limit_gib(on_gpu: bool) -> float:
    """The most dense weights (GiB, in the compute dtype) that `dense_copy` holds instead of 4-bit layers."""
    return GPU_DENSE_LIMIT_GIB if on_gpu else CPU_DENSE_LIMIT_GIB


def dense_copy(model, limit_gib: float | None = None):
    """Swap each 4-bit layer for a plain one holding the very same weights, dequantized once, when they are small.

    bitsandbytes' fused 4-bit kernel serves one token at a time (generation on a GPU); for anything
    larger, a training step or a batch of prompts, it dequantizes every weight at every use (twice per
    training step) and calls the ordinary matmul on the result, from a Python autograd function per
    layer. Doing the dequantization once gives the same numbers and leaves only the matmuls: faster
    training on CPU (benchmarks/cpu_dense_training.py), and on a GPU fewer of the Python calls a small
    model's step waits on (benchmarks/README.md). Skipped where the dense weights would pass
    `limit_gib` (default: `dense_limit_gib`: 4 GiB on CPU, 1 GiB on a GPU), since saving that memory
    is what 4-bit is for: a 7B model keeps its 4-bit layers on a GPU.
    """
    import bitsandbytes as bnb

    limit = dense_limit_gib(torch.cuda.is_available()) if limit_gib is None else limit_gib
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    dense_gib = sum(m.in_features * m.out_features for m in layers) * compute_dtype().itemsize / 2**30
    stored_for_fsdp = any(getattr(m.weight, "quant_storage", torch.uint8) != torch.uint8 for m in layers)
    if not layers or dense_gib > limit or stored_for_fsdp:  # FSDP shards 4-bit layers as they are stored
        return model
    return dequantized(model)


def dequantized(model):
    """Swap each 4-bit layer for a plain one of the compute dtype holding its NF4/FP4 weights dequantized,
    on the layer's own device: the weights the adapter was trained against."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    if any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for _, m in layers):
        # On an AVX512-BF16 CPU, an eval-mode forward repacks the 4-bit bytes for a bf16 kernel, and
        # the repacking is only undone "best effort" (its absmax is quantized again).
        raise RuntimeError("dense_copy must run before the model's first forward pass: "
                           "bitsandbytes has repacked its 4-bit weights for bf16 inference")
    for name, module in layers:
        parent, _, child = name.rpartition(".")
        # skip_init: its weights are overwritten below, and a random init would draw from the RNG that seeds the adapter
        dense = torch.nn.utils.skip_init(torch.nn.Linear, module.in_features, module.out_features,
                                         bias=module.bias is not None, device=module.weight.device, dtype=compute_dtype())
        with torch.no_grad():
            dense.weight.copy_(dequantize_4bit(module.weight.data, module.weight.quant_state).to(compute_dtype()))
            if module.bias is not None:
                dense.bias.copy_(module.bias)
        dense.requires_grad_(False)
        setattr(model.get_submodule(parent) if parent else model, child, dense)
    return model


def _contiguous_head_input(model) -> None:
    """Make the output head's input contiguous.

    With `logits_to_keep` the head sees a strided slice of the hidden states, and PyTorch then
    multiplies by a batch-expanded copy of the vocabulary matrix, many times slower on CPU.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))
