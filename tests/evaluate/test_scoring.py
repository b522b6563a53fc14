import numpy as np
import torch

from finetune.evaluate.scoring import NO_LABEL, label_scores, label_token_ids, match_labels, predict_by_scoring
from finetune.text.prompts import prompt_ids, render_prompt
from tests.conftest import tiny_llama

TEMPLATE = "Product: {text}\nDepartment:"


def bigram_model(tokenizer, transitions: dict[int, int]):
    """A 1-layer Llama whose next token depends only on the current one: `transitions[a] = b` makes b near-certain.

    Attention and MLP outputs are zeroed, so each position's hidden state is its own token's
    embedding; the output head then encodes the chosen bigram table.
    """
    model = tiny_llama(len(tokenizer))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for dim, (current, following) in enumerate(transitions.items()):
            model.model.embed_tokens.weight[current, dim] = 1.0
            model.lm_head.weight[following, dim] = 3.0  # logit 24 after RMSNorm: near-certain over 49k tokens
    return model


def test_scoring_must_pick_the_longer_label_when_the_model_continues_it(tokenizer):
    """'dairy' is a token prefix of 'dairy eggs': without scoring the end token, 'dairy' would always win."""
    prompt = render_prompt(TEMPLATE, "Organic Whole Milk")
    last = prompt_ids(tokenizer, prompt)[-1]
    dairy, eggs = tokenizer(" dairy eggs", add_special_tokens=False)["input_ids"]
    assert tokenizer(" dairy", add_special_tokens=False)["input_ids"] == [dairy]
    model = bigram_model(tokenizer, {last: dairy, dairy: eggs, eggs: tokenizer.eos_token_id})

    labels = ["dairy", "dairy eggs", "frozen"]
    scores = label_scores(model, tokenizer, [prompt], labels, " ", batch_size=4)
    assert predict_by_scoring(scores, labels) == ["dairy eggs"]
    assert scores[0, 1] > -1e-3  # the model is certain of 'dairy eggs' + end


def test_scoring_follows_the_model_not_the_label_order(tokenizer):
    prompt = render_prompt(TEMPLATE, "Ice Cream")
    last = prompt_ids(tokenizer, prompt)[-1]
    frozen = tokenizer(" frozen", add_special_tokens=False)["input_ids"][0]
    model = bigram_model(tokenizer, {last: frozen})
    labels = ["dairy eggs", "bakery", "frozen", "produce"]
    assert predict_by_scoring(label_scores(model, tokenizer, [prompt], labels, " ", 2), labels) == ["frozen"]


def brute_force_scores(model, tokenizer, prompts, labels):
    """Each label's log-likelihood from one unpadded forward pass per (prompt, label)."""
    label_ids = label_token_ids(tokenizer, labels, " ")
    out = np.zeros((len(prompts), len(labels)))
    for i, prompt in enumerate(prompts):
        context = prompt_ids(tokenizer, prompt)
        for j, answer in enumerate(label_ids):
            ids = torch.tensor([context + answer])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            out[i, j] = sum(logp[len(context) - 1 + k, t].item() for k, t in enumerate(answer))
    return out


def test_batched_cached_scoring_equals_one_pass_per_label(tiny_model, tokenizer):
    texts = ["Milk", "Organic Baby Spinach Leaves", "Frozen Mixed Berries With Extra Long Name Here", "Dog Food"]
    prompts = [render_prompt(TEMPLATE, t) for t in texts]
    labels = ["dairy", "dairy eggs", "dry goods pasta", "frozen", "pets"]
    fast = label_scores(tiny_model, tokenizer, prompts, labels, " ", batch_size=3)
    slow = brute_force_scores(tiny_model, tokenizer, prompts, labels)
    # Log-likelihoods of -10 to -45 (up to 4 tokens over a 49k vocabulary) in fp32, cached against uncached
    # attention: relative 1e-5 is ~100 ulps; a wrong position or mask moves a score by 1 or more.
    np.testing.assert_allclose(fast, slow, rtol=1e-5)


def test_end_token_is_scored_only_when_a_label_prefixes_another(tokenizer):
    eos = tokenizer.eos_token_id
    assert all(ids[-1] != eos for ids in label_token_ids(tokenizer, ["frozen", "dairy eggs"], " "))
    assert all(ids[-1] == eos for ids in label_token_ids(tokenizer, ["dairy", "dairy eggs"], " "))


def test_generated_answers_match_labels_exactly_or_count_as_no_label():
    labels = ["dairy eggs", "frozen"]
    assert match_labels(["Dairy Eggs", "frozen ", "frozen food", ""], labels) == \
        ["dairy eggs", "frozen", NO_LABEL, NO_LABEL]


def test_batched_generation_stops_at_the_end_token_and_matches_a_label(tokenizer):
    """The hand-written notebooks' way (greedy generation + exact match), batched with left padding."""
    from finetune.evaluate.scoring import generate_answers

    short, long = render_prompt(TEMPLATE, "Milk"), render_prompt(TEMPLATE, "Organic Whole Milk Half Gallon")
    last = prompt_ids(tokenizer, short)[-1]
    assert prompt_ids(tokenizer, long)[-1] == last
    dairy, eggs = tokenizer(" dairy eggs", add_special_tokens=False)["input_ids"]
    model = bigram_model(tokenizer, {last: dairy, dairy: eggs, eggs: tokenizer.eos_token_id})
    answers = generate_answers(model, tokenizer, [short, long], batch_size=2, max_new_tokens=6)
    assert answers == ["dairy eggs", "dairy eggs"]
    assert match_labels(answers, ["dairy eggs", "frozen"]) == ["dairy eggs", "dairy eggs"]


def test_labels_scored_in_chunks_of_a_tiny_memory_budget_score_the_same(tiny_model, tokenizer):
    """Memory is bounded by scoring a chunk of labels at a time; the chunking must not change any score."""
    prompts = [render_prompt(TEMPLATE, t) for t in ["Milk", "Organic Baby Spinach Leaves", "Dog Food"]]
    labels = ["dairy eggs", "dry goods pasta", "frozen", "meat seafood", "personal care", "canned goods", "pets"]
    whole = label_scores(tiny_model, tokenizer, prompts, labels, " ", batch_size=3, memory_gib=4.0)
    one_at_a_time = label_scores(tiny_model, tokenizer, prompts, labels, " ", batch_size=3, memory_gib=1e-9)
    np.testing.assert_allclose(one_at_a_time, whole, rtol=1e-5)  # same sums in other batch shapes: fp32 ulps


def test_label_chunks_fit_the_budget_and_group_labels_of_one_length():
    from finetune.evaluate.scoring import _label_chunks

    label_ids = [[1, 2], [3, 4, 5, 6], [7, 8], [9, 10, 11], [12, 13]]
    per_label = lambda width: 100 * width  # noqa: E731 - bytes one label's continuation needs
    chunks = _label_chunks(list(range(5)), label_ids, per_label, budget=350)
    assert sorted(j for c in chunks for j in c) == [0, 1, 2, 3, 4]
    assert chunks[0] == [0, 2, 4]  # the three 2-token labels together, 3 x 100 bytes
    for chunk in chunks:
        width = max(len(label_ids[j]) - 1 for j in chunk)
        assert len(chunk) == 1 or per_label(width) * len(chunk) <= 350
