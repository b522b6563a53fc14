"""Changes to the training step that `qlora_throughput.py` measures beside the project path: Liger Kernel's fused
layers (`project-liger*`) or only its fused linear cross-entropy (`*-flce`), and the checkpointed layers' inputs
offloaded to pinned host memory (`project-offload*`: transformers' own offload, or the copies on a side stream,
fetched back a layer ahead), and the compiled blocks replayed as CUDA graphs (`project-cudagraphs*`). Each is applied to a model the benchmark has built; none is part of the pipeline.
"""

from __future__ import annotations

import torch


def with_liger(model) -> None:
    """Liger Kernel's fused layers on a loaded Llama (its RMSNorm, SwiGLU, RoPE, and the fused linear cross-entropy
    that never holds the logits), through Liger's API for a model already loaded."""
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, fused_linear_cross_entropy=True, model=model)


def with_fused_cross_entropy(model) -> None:
    """Only Liger Kernel's fused linear cross-entropy on a loaded Llama: its `forward` (this instance's alone) hands
    the final hidden states, the head's weight and the labels to the fused kernel, which computes the loss and the
    hidden states' gradient chunk by chunk, never holding the logits. Everything else is transformers' own, so the
    decoder blocks compile as in the project path. The labels are shifted and -100 ignored as transformers' own
    loss does, within the positions `logits_to_keep` keeps (padded batches) or over the packed row, whose examples'
    first tokens TRL's collator masks; `num_items_in_batch` divides the sum as transformers' loss does."""
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    apply_liger_kernel_to_llama(rope=False, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=False,
                                swiglu=False, model=model)


class _Held:
    """One offloaded tensor: its pinned host copy, and its device copy while on the way back (compared by identity)."""

    __slots__ = ("host", "device", "stride", "gpu", "ready")

    def __init__(self, host: torch.Tensor, device: torch.device, stride: tuple):
        self.host, self.device, self.stride, self.gpu, self.ready = host, device, stride, None, None


class StreamedOffload:
    """Each checkpointed layer's input to pinned host memory on a side stream, and back one layer ahead.

    Saved-tensor hooks entered around each layer's checkpoint call, so that they see only the tensors the checkpoint
    keeps (the layer's input; what the layer saves inside is the checkpoint's own, recomputed). The forward's copy
    to the host runs beside the next layers' compute instead of stopping the compute stream; in the backward, taking
    a layer's input back starts the copy of the layer below's, so that it is there when its recompute begins.
    """

    def __init__(self, min_bytes: int = 1 << 20):
        self.stream = torch.cuda.Stream()
        self.min_bytes = min_bytes
        self.pending: list[_Held] = []  # packed and not yet taken back, in the forward's order

    def pack(self, tensor: torch.Tensor):
        if not tensor.is_cuda or tensor.numel() * tensor.element_size() < self.min_bytes:
            return tensor
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
        tensor.record_stream(self.stream)  # its memory is not handed out again before the copy has read it
        entry = _Held(host, tensor.device, tensor.stride())
        self.pending.append(entry)
        return entry

    def _fetch(self, entry: _Held) -> None:
        with torch.cuda.stream(self.stream):  # after the copy to the host, queued on this stream before it
            gpu = torch.empty_strided(entry.host.shape, entry.stride, dtype=entry.host.dtype, device=entry.device)
            gpu.copy_(entry.host, non_blocking=True)
            entry.ready = torch.cuda.Event()
            entry.ready.record(self.stream)
        entry.gpu = gpu

    def unpack(self, entry):
        if isinstance(entry, torch.Tensor):
            return entry
        if entry.gpu is None:
            self._fetch(entry)
        main = torch.cuda.current_stream()
        main.wait_event(entry.ready)
        gpu, entry.gpu = entry.gpu, None  # the checkpoint holds it while it recomputes; nothing here does
        gpu.record_stream(main)
        if any(held is entry for held in self.pending):
            self.pending = [held for held in self.pending if held is not entry]
            if self.pending and self.pending[-1].gpu is None:
                self._fetch(self.pending[-1])  # the next layer down: its recompute comes next
        return gpu

    def checkpoint(self, function, *args, **kwargs):
        from torch.utils.checkpoint import checkpoint

        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            return checkpoint(function, *args, **kwargs)


def offloaded_checkpointing(streamed: bool):
    """`finetune.model.methods.checkpointing_on` with the checkpointed layers' inputs held in pinned host memory:
    transformers' own `offload=True` (its `save_on_cpu` around each layer's checkpoint), or `StreamedOffload`."""
    import functools

    def checkpointing_on(model, enabled: bool) -> None:
        if not enabled:
            return
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name is deprecated
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, offload=not streamed)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs, offload=not streamed)
        if streamed:
            offload = StreamedOffload()
            for module in model.modules():
                if getattr(module, "gradient_checkpointing", False) and hasattr(module, "_gradient_checkpointing_func"):
                    module._gradient_checkpointing_func = functools.partial(offload.checkpoint, **kwargs)
        model.enable_input_require_grads()

    return checkpointing_on


def compiled_with_cuda_graphs():
    """`finetune.train.training.compile_blocks` with torch.compile's `mode="reduce-overhead"`: each block's compiled
    forward and backward recorded once per shape as CUDA graphs and replayed, so that a step's thousands of kernel
    launches cost the host one replay per graph (static shapes: the full-row workload's batches are all one shape)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    def compile_blocks(model, backend: str = "inductor") -> int:
        blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        for block in blocks:
            block.compile(dynamic=False, backend=backend, mode="reduce-overhead")
        return len(blocks)

    return compile_blocks
