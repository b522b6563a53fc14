"""finetune serve through the official openai client: models, chat (whole and streamed), completions, and
classifications equal to `finetune predict`'s; concurrent requests share one batch."""

from __future__ import annotations

import asyncio
import json

import httpx2 as httpx
import openai
import pandas as pd
import pytest

from finetune.deliver.predict import predict_file
from finetune.deliver.trained import load_trained
from finetune.evaluate.generation import generate
from tests.serve.conftest import running

PROMPTS = ["hi", "What is the capital of France?", "Tell me a joke", "Why is the sky blue?"]
PRODUCTS = ["Organic Whole Milk", "Spaghetti No. 5", "Frozen Peas", "Baby Spinach", "Salted Pretzels",
            "Greek Yogurt Honey", "Penne Rigate", "Ice Cream Sandwiches"]


@pytest.fixture(scope="module")
def chat_server(loaded_chatter):
    """A server over the chat adapter; its batcher records the size of each batch it runs."""
    with running(loaded_chatter) as (url, app):
        sizes = []
        runner = app.state.batcher.runners["generate"]
        app.state.batcher.runners["generate"] = lambda jobs: (sizes.append(len(jobs)), runner(jobs))
        yield url, app.state.batcher, sizes


def client(url: str, cls=openai.OpenAI):
    return cls(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_models_lists_the_one_model_named_after_its_folder_and_knows_it_by_its_path(chat_server, chatter):
    url, _, _ = chat_server
    models = client(url).models.list()
    assert [m.id for m in models.data] == ["adapter"] and models.data[0].owned_by == "finetune"
    assert client(url).models.retrieve(str(chatter)).id == "adapter"
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_concurrent_chats_share_a_batch_and_answer_as_finetune_predict_does(chat_server, loaded_chatter):
    url, batcher, sizes = chat_server
    run, model, tokenizer = loaded_chatter
    expected = [row["answer"] for row in run.kind.predict(run, model, tokenizer, PROMPTS, {
        "batch_size": 1, "max_new_tokens": 12, "no_repeat_ngram_size": 4}, lambda n: None)]  # both defaults: 4

    async def ask_all():
        chat = client(url, openai.AsyncOpenAI).chat.completions
        return await asyncio.gather(*(chat.create(model="adapter", messages=[{"role": "user", "content": p}],
                                                  max_tokens=12) for p in PROMPTS))

    sizes.clear()
    batcher.window_s = 0.5  # long enough that requests sent together surely meet, on a busy machine too
    try:
        answers = asyncio.run(ask_all())
    finally:
        batcher.window_s = 0.01
    assert [a.choices[0].message.content.strip() for a in answers] == expected
    assert sizes == [len(PROMPTS)]  # one batch, not one pass each
    assert all(a.choices[0].finish_reason == "length" and a.usage.completion_tokens == 12 for a in answers)


def test_a_streamed_chat_is_the_same_answer_in_chunks_ending_with_done(chat_server):
    url, _, _ = chat_server
    messages = [{"role": "user", "content": PROMPTS[1]}]
    whole = client(url).chat.completions.create(model="adapter", messages=messages, max_tokens=10)
    chunks = list(client(url).chat.completions.create(model="adapter", messages=messages, max_tokens=10, stream=True,
                                                      stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10 and len(chunks) > 5  # a token or so a chunk, not one lump
    body = {"model": "adapter", "messages": messages, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: {") for line in lines[:-1])
    assert json.loads(lines[1][6:])["object"] == "chat.completion.chunk"


def test_completions_continue_the_raw_prompt_and_cut_at_a_stop_string(chat_server, loaded_chatter):
    url, _, _ = chat_server
    _, model, tokenizer = loaded_chatter
    prompt = "Product: Frozen Peas\nDepartment:"
    ids = tokenizer(prompt)["input_ids"]
    greedy = generate(model, tokenizer, [ids], 1, 8, on_batch=lambda n: None)[0]
    answer = client(url).completions.create(model="adapter", prompt=prompt, max_tokens=8)
    assert answer.choices[0].text.strip() == greedy and answer.usage.prompt_tokens == len(ids)
    stop = answer.choices[0].text.split()[2]
    cut = client(url).completions.create(model="adapter", prompt=prompt, max_tokens=8, stop=[stop])
    assert cut.choices[0].text == answer.choices[0].text[:answer.choices[0].text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client(url).completions.create(model="adapter", prompt=prompt, max_tokens=8, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_sampling_follows_the_seed(chat_server):
    url, _, _ = chat_server
    ask = lambda seed: client(url).completions.create(  # noqa: E731
        model="adapter", prompt="Hello", max_tokens=8, temperature=1.0, top_p=0.9, seed=seed).choices[0].text
    assert ask(1) == ask(1) != ask(2)


@pytest.mark.parametrize("folder", ["classifier", "head_classifier"])
def test_classifications_equal_finetune_predict_on_the_same_rows(folder, request, tmp_path):
    run, model, tokenizer = loaded = load_trained(request.getfixturevalue(folder))
    pd.DataFrame({"product": PRODUCTS}).to_csv(tmp_path / "products.csv", index=False)
    predict_file(run, model, tokenizer, tmp_path / "products.csv", tmp_path / "predicted.jsonl", batch_size=64,
                 memory_gib=2.0, top_k=3)
    expected = pd.read_json(tmp_path / "predicted.jsonl", lines=True)

    async def classify_all(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            bodies = [{"model": "adapter", "input": p, "top_k": 3} for p in PRODUCTS[:3]]
            bodies.append({"model": "adapter", "input": PRODUCTS[3:], "top_k": 2})
            answers = await asyncio.gather(*(http.post("/v1/classifications", json=b) for b in bodies))
        return [row for a in answers for row in a.raise_for_status().json()["data"]]

    with running(loaded, window_ms=300, max_batch=64) as (url, _):
        rows = asyncio.run(classify_all(url))
    assert [r["label"] for r in rows] == expected["label"].tolist()
    assert [r["probability"] for r in rows] == pytest.approx(expected["probability"].tolist(), abs=1e-5)
    for i, (row, top) in enumerate(zip(rows, expected["top_k"])):
        k = 3 if i < 3 else 2
        assert [t["label"] for t in row["top_k"]] == [t["label"] for t in top[:k]]
        assert [t["probability"] for t in row["top_k"]] == pytest.approx([t["probability"] for t in top[:k]],
                                                                          abs=1e-5)


def test_a_chat_answer_repeats_no_n_gram_as_predict_and_chat_answer(loaded_chatter):
    """--no-repeat-ngram-size (4 by default, as predict's and chat's) bans what generate()'s no_repeat_ngram_size
    bans; at 2 the tiny model's answer changes (it repeats word pairs within 40 tokens)."""
    run, model, tokenizer = loaded_chatter
    answers = {}
    for n in (2, 0):
        expected = run.kind.predict(run, model, tokenizer, PROMPTS[:1], {
            "batch_size": 1, "max_new_tokens": 40, "no_repeat_ngram_size": n}, lambda rows: None)[0]["answer"]
        with running(loaded_chatter, no_repeat_ngram_size=n) as (url, _):
            answer = client(url).chat.completions.create(model="adapter", max_tokens=40,
                                                         messages=[{"role": "user", "content": PROMPTS[0]}])
        answers[n] = answer.choices[0].message.content.strip()
        assert answers[n] == expected
    assert answers[2] != answers[0]
