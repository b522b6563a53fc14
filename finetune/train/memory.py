"""What a training step needs of the GPU's memory, so that `auto` settings can be chosen by what the device has.

The figures are estimates from the model's config, kept on the safe side: activation checkpointing is switched
off only when the activations a step keeps for its backward pass fit, with room to spare, in what the device
has free once the model is loaded and the optimizer's states are counted.
"""

from __future__ import annotations

import dataclasses

import torch

# Of the memory left free after the model, the optimizer states and the gradients, the share activations may take:
# the allocator's fragmentation, the attention kernels' workspace and the loss's logits need the rest.
ACTIVATIONS_SHARE = 0.7


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Bytes a training step needs beside the loaded model, and the bytes the device has free for them."""

    activations: int          # kept for the backward pass when activation checkpointing is off
    optimizer: int            # trainable weights' gradients and AdamW's two moments (fp32)
    free: int                 # free on the device after the model was loaded

    def fits_without_checkpointing(self) -> bool:
        return self.activations <= ACTIVATIONS_SHARE * (self.free - self.optimizer)

    def describe(self) -> str:
        gib = 2**30
        return (f"activations {self.activations / gib:.1f} GiB, optimizer {self.optimizer / gib:.1f} GiB, "
                f"free {self.free / gib:.1f} GiB")


def activation_bytes(config, tokens: int, logits_tokens: int, element_bytes: int = 2) -> int:
    """Bytes of the activations autograd keeps for one step of `tokens` tokens through every decoder layer.

    Per token and layer, in the compute dtype: the inputs every (LoRA-wrapped) linear layer keeps, the query, key,
    value and attention output, the norms' inputs (kept in fp32, so counted twice): about 12 hidden-sized vectors;
    the MLP's gate, up, activation and product: 4 intermediate-sized ones. `logits_tokens` positions also keep their
    logits over the vocabulary (and their fp32 copy and gradient in the loss).
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = config.hidden_size
    intermediate = (getattr(config, "intermediate_size", None) or getattr(config, "ffn_hidden_size", None)
                    or 4 * hidden)
    per_token_layer = element_bytes * (12 * hidden + 4 * intermediate)
    logits = logits_tokens * config.vocab_size * (element_bytes + 4 + 4)
    return tokens * config.num_hidden_layers * per_token_layer + logits


def lora_parameters(model, r: int) -> int:
    """Weights LoRA of rank `r` adds on every linear layer of the decoder (an upper bound for any target list)."""
    count = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] == "lm_head" or not hasattr(module, "in_features"):
            continue
        count += r * (module.in_features + module.out_features)
    return count


def optimizer_bytes(trainable_parameters: int) -> int:
    """fp32 gradient and AdamW's two moments per trainable weight."""
    return 12 * trainable_parameters


def free_bytes(device: torch.device) -> int:
    """Bytes free on a CUDA device now (other processes' use counted), plus what this process's allocator holds."""
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
