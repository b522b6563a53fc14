import torch

from finetune.text.prompts import IGNORE_INDEX, answer_ids, encode_example, render_prompt
from finetune.train.batching import AnswerOnlyCollator, left_pad, positions


def encoded(tokenizer, pairs):
    return [encode_example(tokenizer, render_prompt("Product: {text}\nDepartment:", text),
                           answer_ids(tokenizer, " ", label), 64) for text, label in pairs]


def test_left_padding_and_positions():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_value=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_answer_only_loss_equals_the_full_sequence_loss(tiny_model, tokenizer):
    """Keeping only the answer's logits must not change the loss, only its cost."""
    features = encoded(tokenizer, [("Organic Whole Milk", "dairy eggs"), ("Peas", "frozen"),
                                   ("Spaghetti Number 5 Extra Long Name", "dry goods pasta")])
    batch = AnswerOnlyCollator(tokenizer.pad_token_id)(features)
    assert batch["logits_to_keep"] == 5  # longest answer: 3 tokens + end token, plus one for the shift
    with torch.no_grad():
        fast = tiny_model(**batch).loss
        full_labels, _ = left_pad([f["labels"] for f in features], IGNORE_INDEX)
        full = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          position_ids=batch["position_ids"], labels=full_labels).loss
    torch.testing.assert_close(fast, full)  # fp32 defaults (rtol 1.3e-6): the same sums over fewer rows; a shifted label is O(1)


def test_padding_does_not_change_an_examples_loss(tiny_model, tokenizer):
    """Pads are masked by attention mask, never by token id (SmolLM2's pad token is its end token)."""
    short, long = encoded(tokenizer, [("Peas", "frozen"), ("A Much Longer Product Name Than Peas", "frozen")])
    collate = AnswerOnlyCollator(tokenizer.pad_token_id)
    with torch.no_grad():
        alone = tiny_model(**collate([short])).loss
        padded = collate([short, long])
        logits = tiny_model(**{k: v for k, v in padded.items() if k != "labels"}).logits
        logp = torch.log_softmax(logits[0, :-1].float(), -1)
        targets = padded["labels"][0, 1:]
        keep = targets != IGNORE_INDEX
        in_batch = -logp[keep].gather(-1, targets[keep].unsqueeze(-1)).mean()
    # fp32 loss ~11: padding changes the attention matmuls' shapes and so their summation order (a few ulps);
    # a pad attended to or a pad token scored moves it by 1e-2 or more.
    torch.testing.assert_close(alone, in_batch, atol=1e-5, rtol=1e-5)


def test_a_packed_rows_mask_keeps_each_token_inside_its_own_example():
    import torch

    from finetune.train.batching import packed_attention_mask

    mask = packed_attention_mask(torch.tensor([[0, 1, 2, 0, 1]]))  # two examples, of 3 and 2 tokens
    assert mask.shape == (1, 1, 5, 5)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0, 0],
                                         [1, 1, 0, 0, 0],
                                         [1, 1, 1, 0, 0],
                                         [0, 0, 0, 1, 0],
                                         [0, 0, 0, 1, 1]]


def test_a_packed_layout_gives_each_examples_offsets_and_the_longest_length():
    from finetune.train.batching import packed_layout

    layout = packed_layout(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]))  # examples of 3, 2 and 4 tokens
    assert layout["offsets"].tolist() == [0, 3, 5, 9] and layout["offsets"].dtype == torch.int32
    assert layout["longest"] == 4 and layout["tokens"] == 9


def _each_example_alone(query, key, value, offsets, longest, scale):
    """A varlen kernel's contract, by SDPA over each example by itself: (tokens, heads, size) in and out."""
    out = torch.empty_like(query)
    bounds = offsets.tolist()
    for start, end in zip(bounds, bounds[1:]):
        q, k, v = (x[start:end].transpose(0, 1)[None] for x in (query, key, value))
        out[start:end] = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)[0] \
            .transpose(0, 1)
    return out


def test_packed_attention_through_a_varlen_kernel_equals_the_masked_row(tiny_model):
    """With a kernel, SDPA's calls on packed rows go to it, and the logits and gradients are those of the whole row
    through SDPA and its mask (fp32); every decoder layer's call went to it; SDPA is itself again after the block."""
    from finetune.model.base_model import key_value_heads_repeated
    from finetune.train.batching import PackedAttention

    sdpa = torch.nn.functional.scaled_dot_product_attention
    lengths = [5, 3, 7, 1, 4]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    input_ids = torch.randint(5, 100, position_ids.shape, generator=torch.Generator().manual_seed(0))
    calls = []

    def kernel(*args):
        calls.append(1)
        return _each_example_alone(*args)

    results = []
    for chosen in (None, kernel):
        tiny_model.zero_grad()
        with PackedAttention(tiny_model, chosen), key_value_heads_repeated(tiny_model):
            logits = tiny_model(input_ids=input_ids, position_ids=position_ids).logits
            logits.float().pow(2).mean().backward()
        results.append((logits.detach(), [p.grad.clone() for p in tiny_model.parameters() if p.grad is not None]))
    assert len(calls) == tiny_model.config.num_hidden_layers
    assert torch.nn.functional.scaled_dot_product_attention is sdpa
    (masked, masked_grads), (varlen, varlen_grads) = results
    torch.testing.assert_close(varlen, masked, atol=1e-5, rtol=1e-5)
    assert len(varlen_grads) == len(masked_grads) > 0
    for a, b in zip(varlen_grads, masked_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_packed_attention_leaves_padded_calls_to_sdpa(tiny_model):
    """A call with an attention mask (a padded batch) is no packed row: the kernel is not asked."""
    from finetune.train.batching import PackedAttention

    calls = []
    ids, mask = left_pad([[5, 6, 7], [8]], pad_value=0)
    with PackedAttention(tiny_model, lambda *args: calls.append(1)), torch.no_grad():
        tiny_model(input_ids=ids, attention_mask=mask, position_ids=positions(mask))
    assert calls == []
