"""Batches for causal LMs: left padding, positions from the attention mask, logits only where needed."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from finetune.text.prompts import IGNORE_INDEX


def any_length_attention():
    """Attention kernels that do not mind a new sequence length every batch, as dynamic padding gives.

    Usable as a context manager or a decorator, around training, label scoring and generation.
    PyTorch's cuDNN attention builds a plan for each new shape, and with length-grouped batches
    nearly every batch is one, which made a 7B step far slower with it than without. Flash,
    memory-efficient and math kernels remain; CPU runs the same kernels as before.
    """
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def packed_attention_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(batch, 1, T, T) booleans for rows of packed examples (positions restart at 0 with each): a token attends to the
    tokens before it in its own example only."""
    example = (position_ids == 0).cumsum(-1)
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    return ((example[:, :, None] == example[:, None, :]) & causal)[:, None]


def packed_layout(position_ids: torch.Tensor) -> dict:
    """Where each packed example starts in the flattened rows (positions restart at 0 with each, and every row starts
    one): its cumulative offsets as int32, the longest example's length and the token count, as varlen kernels take
    them. Reads the longest length back from the device once."""
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten()
    ends = torch.cat([starts, starts.new_tensor([flat.numel()])])
    return {"offsets": ends.to(torch.int32), "longest": int((ends[1:] - ends[:-1]).max()), "tokens": flat.numel()}


def flash_over_examples(query, key, value, offsets, longest: int, scale: float | None):
    """Causal flash attention over each packed example alone (PyTorch's varlen kernel), on (tokens, heads, head size)
    tensors; None where it does not apply: not on a GPU, neither in bf16/fp16 nor under autocast, a PyTorch without
    the kernel, or a scale this PyTorch's kernel does not take. Its cost is the examples' own attention, not the whole
    row's. fp32 inputs under autocast (Falcon's fp32 layer norms hand its attention fp32) are computed in the autocast
    dtype and handed back in fp32, as transformers' own flash attention does."""
    if not query.is_cuda:
        return None
    dtype = query.dtype
    if dtype not in (torch.bfloat16, torch.float16):
        if not torch.is_autocast_enabled("cuda"):
            return None
        half = torch.get_autocast_dtype("cuda")
        query, key, value = query.to(half), key.to(half), value.to(half)
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    import inspect

    takes = inspect.signature(varlen_attn).parameters
    kwargs = {"is_causal": True} if "is_causal" in takes else {"window_size": (-1, 0)}  # PyTorch 2.10 / 2.11 on
    if scale is not None and abs(scale - query.shape[-1] ** -0.5) > 1e-6 * scale:
        if "scale" not in takes:
            return None
        kwargs["scale"] = scale
    return varlen_attn(query, key, value, offsets, offsets, longest, longest, **kwargs).to(dtype)


class PackedAttention:
    """Attention kept inside each example of a packed row, inside a `with` block on a model.

    Every call of the model with position ids and no mask gets the mask of its packed rows (`packed_attention_mask`):
    transformers builds that mask from the position ids by itself only in models that pass them to their mask (Llama
    does; Falcon's `create_causal_mask` call leaves them out, so its packed examples would attend to each other). A 4-D
    mask is taken as it is by every model. With `kernel` (`flash_over_examples`), SDPA's calls on those rows go to it
    instead: SDPA with a mask computes the whole row's scores and masks them, a cost that grows with the row's square
    (at 4,096 tokens of 15-token examples, ~270 times the examples' own), where varlen attention computes only each
    example's. Any other SDPA call, or one the kernel declines, runs SDPA as before. Leaving the block takes the hook
    off and gives torch its own SDPA back, whatever happened inside.
    """

    def __init__(self, model, kernel=None):
        self.model = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.layout: dict = {}
        self.kernel = kernel
        self.handle = None
        self.sdpa = torch.nn.functional.scaled_dot_product_attention

    def __enter__(self) -> PackedAttention:
        self.handle = self.model.register_forward_pre_hook(self._add_mask, with_kwargs=True)
        if self.kernel is not None:
            torch.nn.functional.scaled_dot_product_attention = self._attention
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()
        if self.kernel is not None:
            torch.nn.functional.scaled_dot_product_attention = self.sdpa

    def _add_mask(self, module, args, kwargs):
        position_ids = kwargs.get("position_ids")
        if position_ids is not None and kwargs.get("attention_mask") is None and kwargs.get("past_key_values") is None:
            kwargs["attention_mask"] = packed_attention_mask(position_ids)
            self.layout = packed_layout(position_ids) if self.kernel is not None else {}
        else:
            self.layout = {}  # a padded call's masks go to SDPA
        return args, kwargs

    @torch.compiler.disable  # a compiled decoder block runs it as it is: its layout changes every step
    def _attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        batch, heads, length, size = query.shape
        if (self.layout and attn_mask is not None and attn_mask.dtype == torch.bool and dropout_p == 0.0
                and batch * length == self.layout["tokens"] and key.shape == query.shape and value.shape == query.shape):
            def flat(x):
                return x.transpose(1, 2).reshape(batch * length, heads, size)

            out = self.kernel(flat(query), flat(key), flat(value), self.layout["offsets"], self.layout["longest"], scale)
            if out is not None:
                return out.reshape(batch, length, heads, size).transpose(1, 2)
        return self.sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                         **kwargs)


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length, shortest first (ties by position): less padding per batch."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[start: start + batch_size] for start in range(0, len(order), batch_size)]


def left_pad(rows: list[list[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack rows right-aligned (so every prompt ends at the last column); returns ids and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def right_pad(rows: list[list[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack rows left-aligned (each keeps the positions it has alone); returns ids and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, whatever the padding."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


class AnswerOnlyCollator:
    """Pads each batch to its own longest example, and asks the model for logits on the answers only.

    With left padding every example ends at the last column, so the loss needs only the logits from
    the first answer token on (plus the one before it, which predicts it): the output head then runs
    on a few positions instead of all of them.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        ids, mask = left_pad([f["input_ids"] for f in features], self.pad_token_id)
        labels, _ = left_pad([f["labels"] for f in features], IGNORE_INDEX)
        answered = labels != IGNORE_INDEX
        first = torch.where(answered.any(-1), answered.int().argmax(-1), labels.shape[1])
        keep = min(int(labels.shape[1] - first.min()) + 1, ids.shape[1])
        return {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask),
                "labels": labels[:, -keep:], "logits_to_keep": keep}
