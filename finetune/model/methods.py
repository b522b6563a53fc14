"""Training methods: what trains and how the base model is held.

qlora: a LoRA adapter on the 4-bit base (dense-copied when small, finetune/model/base_model.py); lora: a LoRA
adapter on the full-precision base; full: every weight, and the result is a whole model folder.
Later stages take either result the same way (`load_trained`, `models_side_by_side`).
"""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from pathlib import Path

import torch
from peft import get_peft_model

from finetune.errors import PipelineError
from finetune.model import base_model
from finetune.model.adapters import REWRITES_BASE, load_adapter, lora_config
from finetune.model.folders import is_local, is_whole_model
from finetune.model.head import HEAD, is_classifier, start_head
from finetune.param_schemas import LoraParams, QuantizationParams

def quantization(method: str, quant: QuantizationParams, sharded: bool = False):
    """The bitsandbytes config the base loads with: 4-bit for qlora (stored for FSDP if `sharded`), none otherwise."""
    return base_model.quantization_config(method == "qlora", quant.quant_type, quant.double_quant, sharded)


def base_dtype(method: str) -> torch.dtype | None:
    """Full fine-tuning keeps fp32 master weights (a GPU computes in bf16 under autocast); the others use the compute dtype."""
    return torch.float32 if method == "full" else None


def load_base(name: str, revision: str, method: str, quant: QuantizationParams, dense: bool = True,
              sharded: bool = False, head: dict | None = None):
    """The base model as `method` trains and scores it; a small 4-bit base is dense-copied (`base_model.dense_copy`)
    unless not `dense`. `sharded`: the model is about to be sharded by FSDP. `head`: with a new classification head
    of that config (`finetune.model.head.head_config`)."""
    model = base_model.load_model(name, revision, quantization(method, quant, sharded), dtype=base_dtype(method),
                                  head=head)
    return base_model.dense_copy(model) if dense else model


@dataclasses.dataclass
class Trainable:
    """A model ready to train, and what saving it needs."""

    model: object
    method: str
    target_modules: list[str]          # the adapted layers; empty for full fine-tuning (every weight trains)
    initial_adapter: tempfile.TemporaryDirectory | None = None  # PiSSA / OLoRA: the start, to save a plain LoRA
    state_dict: dict | None = None     # FSDP: the whole state dict gathered from the shards, which saving writes


def checkpointing_on(model, enabled: bool) -> None:
    """Recompute activations in the backward pass, non-reentrant (the input needs grad for a frozen embedding)."""
    if not enabled:
        return
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name is deprecated
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.enable_input_require_grads()


def freeze_base(model, checkpointing: bool) -> None:
    """Freeze every base weight (in the dtype it has) and switch on activation checkpointing if asked.

    peft's prepare_model_for_kbit_training also casts the frozen embeddings, norms and output head
    to fp32, which costs memory and teaches them nothing: without it a 7B model's step peaks lower,
    at the same step time and loss.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    checkpointing_on(model, checkpointing)


def trainable_in_fp32(model) -> None:
    """Trainable weights in fp32: AdamW's updates vanish in bf16 weights, and bf16 math is ~20x slower on CPU."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def original_weights(folder: str):
    """A lookup of the base model's weights as its safetensors files hold them (before any 4-bit rounding)."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors")) if is_local(folder) else []
    if not files:
        raise PipelineError(f"lora.init loftq reads the base model's original weights from its .safetensors files; "
                            f"{folder} has none: download the model into a local folder (base_model.name)")
    index = {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            index.update({key: f for key in st.keys()})

    def weight(name: str) -> torch.Tensor:
        with safe_open(index[name], framework="pt") as st:
            return st.get_tensor(name).float()
    return weight


@torch.no_grad()
def loftq_start(model, base_folder: str) -> int:
    """Start each LoRA pair where 4-bit base + adapter is closest to the original weight: B A = SVD_r(W - Q(W)) / scale.

    This is LoftQ's one-step initialisation, as PEFT's `replace_lora_weights_loftq` does it, by hand
    because that one runs on CUDA only and leaves out the adapter's scale (alpha / r). Returns the layers set.
    """
    from bitsandbytes.functional import dequantize_4bit

    weight_of, count = original_weights(base_folder), 0
    for name, module in model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        base = module.get_base_layer()
        quantized = (dequantize_4bit(base.weight.data, base.weight.quant_state) if hasattr(base.weight, "quant_state")
                     else base.weight).float()
        key = name.removeprefix("base_model.model.") + ".weight"
        residual = weight_of(key).to(quantized.device) - quantized
        u, s, vh = torch.linalg.svd(residual, full_matrices=False)
        r, scale = module.r["default"], module.scaling["default"]
        root = s[:r].sqrt()
        module.lora_A["default"].weight.copy_(root[:, None] * vh[:r])
        module.lora_B["default"].weight.copy_(u[:, :r] * root / scale)
        count += 1
    return count


def trainable(model, method: str, lora: LoraParams, checkpointing: bool, base_folder: str) -> Trainable:
    """Make `model` (as `load_base(..., dense=False)` gave it) ready for `method`; a classification head starts from
    the seed set before, and trains whole (with every weight, or beside the adapter)."""
    if is_classifier(model):
        start_head(model)
    if method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        checkpointing_on(model, checkpointing)
        return Trainable(model, method, [])
    model = base_model.dense_copy(model)
    config = lora_config(model, lora)
    freeze_base(model, checkpointing)
    model = get_peft_model(model, config)
    initial = None
    if lora.init == "loftq":
        loftq_start(model, base_folder)
    elif lora.init in REWRITES_BASE:
        initial = tempfile.TemporaryDirectory(prefix="initial-adapter-")
        adapter_config = model.peft_config["default"]
        adapter_config.init_lora_weights, init = True, adapter_config.init_lora_weights  # saved so that loading does not redo it
        model.save_pretrained(Path(initial.name) / "initial")
        adapter_config.init_lora_weights = init
    trainable_in_fp32(model)
    return Trainable(model, method, sorted(config.target_modules), initial)


def save(trained: Trainable, dest: Path) -> None:
    """Write the adapter, or the whole model for full fine-tuning, into `dest`, byte for byte the same for the same
    training.

    A PiSSA or OLoRA adapter was trained against a base with its start taken out; PEFT converts it
    into a plain LoRA adapter (of twice the rank) on the original base, which is what later stages load.
    """
    model = trained.model
    if trained.method == "full":
        use_cache, model.config.use_cache = model.config.use_cache, True  # off for training; inference wants it on
        try:
            model.save_pretrained(dest, state_dict=trained.state_dict)  # in the fp32 it trained in
        finally:
            model.config.use_cache = use_cache
        return
    conversion = str(Path(trained.initial_adapter.name) / "initial") if trained.initial_adapter else None
    for config in model.peft_config.values():  # PEFT keeps them as a set, whose order changes from process to process
        if isinstance(config.target_modules, set):
            config.target_modules = sorted(config.target_modules)
    with warnings.catch_warnings():  # PEFT warns "PiSSA/OLoRA changes the base weights ... convert it", while converting
        warnings.filterwarnings("ignore", message=r".*changes the base weights of the model", category=UserWarning)
        model.save_pretrained(dest, state_dict=trained.state_dict, path_initial_model_for_weight_conversion=conversion)
    if conversion and is_classifier(model):
        _head_kept(model, Path(dest))


def _head_kept(model, dest: Path) -> None:
    """Put the trained classification head back into a converted PiSSA / OLoRA adapter: PEFT's conversion writes the
    LoRA weights only (peft 0.21), and the head, trained on top of the same effective weights, still holds."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    head = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()
            if k.rsplit(".", 2)[-2] == HEAD}
    file = dest / "adapter_model.safetensors"
    save_file({**load_file(file), **head}, file, metadata={"format": "pt"})


def load_trained(folder: str | Path, load_base_model):
    """The trained model for inference: a whole model folder as it is (with its classification head, if it has one),
    or the adapter on `load_base_model()` (which gives the base its head, for an adapter trained with one)."""
    if is_whole_model(folder):
        return base_model.load_model(str(folder), "main")
    return load_adapter(load_base_model(), str(folder))


def models_side_by_side(folder: str | Path, load_base_model):
    """Yield ("base", model) then ("finetuned", model) for the result in `folder`: one base with its adapter
    switched off then on, or, for a whole model, the base and then the whole model, loaded only once the base
    is let go (the caller drops its reference before asking for the next), so two never share memory."""
    if is_whole_model(folder):
        base = load_base_model()
        yield "base", base
        del base
        yield "finetuned", load_trained(folder, load_base_model)
        return
    trained = load_trained(folder, load_base_model)
    with trained.disable_adapter():
        yield "base", trained
    yield "finetuned", trained
