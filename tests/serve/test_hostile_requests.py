"""Malformed and hostile requests: each gets its status and OpenAI's error object with a one-line message, never a
traceback, and the server answers a normal request right after."""

from __future__ import annotations

import threading
import time

import httpx2 as httpx
import pytest

from finetune.deliver.trained import load_trained
from tests.serve.conftest import running

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "adapter", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
LONG_PROMPT = "word " * 300  # past the tiny model's context of 256 positions


def chat(**changes) -> dict:
    return {**CHAT, **changes}


# (what, method, path, body or raw bytes, headers, status, code or param the error names, words its message has)
CASES = [
    ("not JSON", "POST", "/v1/chat/completions", b'{"model": "adapter", "messages": [',
     {**AUTH, "Content-Type": "application/json"}, 400, None, "not valid JSON"),
    ("JSON not said to be JSON", "POST", "/v1/chat/completions", b"model=adapter", AUTH, 400, None,
     "Content-Type: application/json"),
    ("a JSON list", "POST", "/v1/chat/completions", [1, 2], AUTH, 400, None, "must be a JSON object"),
    ("a string for max_tokens", "POST", "/v1/chat/completions", chat(max_tokens="5"), AUTH, 400, "max_tokens",
     "valid integer"),
    ("no messages", "POST", "/v1/chat/completions", {"model": "adapter"}, AUTH, 400, "messages", "field required"),
    ("no messages at all", "POST", "/v1/chat/completions", chat(messages=[]), AUTH, 400, "messages", "at least 1"),
    ("a number as content", "POST", "/v1/chat/completions", chat(messages=[{"role": "user", "content": 7}]), AUTH, 400,
     "messages.0.content", "valid string"),
    ("an unknown role", "POST", "/v1/chat/completions", chat(messages=[{"role": "robot", "content": "hi"}]), AUTH, 400,
     "messages.0.role", "'user'"),
    ("no user turn last", "POST", "/v1/chat/completions",
     chat(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]), AUTH, 400,
     "messages", "last message must be the user's"),
    ("a huge max_tokens", "POST", "/v1/chat/completions", chat(max_tokens=10**9), AUTH, 400, "max_tokens",
     "--max-tokens) is 64"),
    ("more than the context leaves", "POST", "/v1/completions",
     {"model": "adapter", "prompt": "word " * 230, "max_tokens": 60}, AUTH, 400, "max_tokens", "of the model's context"),
    ("a prompt past the context", "POST", "/v1/completions", {"model": "adapter", "prompt": LONG_PROMPT}, AUTH, 400,
     "context_length_exceeded", "model's context is 256"),
    ("two answers", "POST", "/v1/chat/completions", chat(n=2), AUTH, 400, "n", "less than or equal to 1"),
    ("a negative temperature", "POST", "/v1/chat/completions", chat(temperature=-1), AUTH, 400, "temperature",
     "greater than or equal to 0"),
    ("five stop strings", "POST", "/v1/chat/completions", chat(stop=list("abcde")), AUTH, 400, "stop", "at most 4"),
    ("an unknown model", "POST", "/v1/chat/completions", chat(model="gpt-4"), AUTH, 404, "model_not_found",
     "serves 'adapter'"),
    ("no API key", "POST", "/v1/chat/completions", CHAT, {}, 401, "invalid_api_key", "Authorization: Bearer"),
    ("a wrong API key", "GET", "/v1/models", None, {"Authorization": "Bearer guess"}, 401, "invalid_api_key", "API key"),
    ("an oversized body", "POST", "/v1/chat/completions", chat(messages=[{"role": "user", "content": "x" * 70_000}]),
     AUTH, 413, "request_too_large", "64 KiB"),
    ("an oversized body sent in chunks", "POST", "/v1/chat/completions", iter([b"x" * 40_000] * 2), AUTH, 413,
     "request_too_large", "64 KiB"),
    ("labels from a chat model", "POST", "/v1/classifications", {"model": "adapter", "input": "milk"}, AUTH, 400,
     "not_a_classifier", "ask /v1/chat/completions"),
    ("an unknown route", "GET", "/v1/engines", None, AUTH, 404, None, "Not Found"),
    ("a wrong method", "GET", "/v1/chat/completions", None, AUTH, 405, None, "Method Not Allowed"),
]


def one_line_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "\n" not in error["message"] and "Traceback" not in response.text and error["message"]
    return error


@pytest.fixture(scope="module")
def server(loaded_chatter):
    with running(loaded_chatter, api_key=KEY) as (url, app):
        yield url, app


@pytest.fixture(scope="module")
def loaded_classifier(classifier):
    return load_trained(classifier)


def answers_normally(url: str) -> None:
    response = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=AUTH, timeout=30)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("what, method, path, body, headers, status, names, words", CASES, ids=[c[0] for c in CASES])
def test_a_bad_request_gets_its_status_and_one_line_then_the_server_goes_on(server, what, method, path, body, headers,
                                                                            status, names, words):
    url, _ = server
    content = body if isinstance(body, bytes) or hasattr(body, "__next__") else None
    response = httpx.request(method, f"{url}{path}", headers=headers, content=content,
                             json=None if content is not None or body is None else body, timeout=30)
    error = one_line_error(response, status)
    assert words in error["message"], error
    assert names is None or names in (error["param"], error["code"]), error
    answers_normally(url)


def test_a_classifier_refuses_to_chat_and_an_empty_text(loaded_classifier):
    with running(loaded_classifier) as (url, _):
        error = one_line_error(httpx.post(f"{url}/v1/chat/completions", json=CHAT), 400)
        assert "not to chat" in error["message"] and "/v1/classifications" in error["message"]
        error = one_line_error(httpx.post(f"{url}/v1/classifications", json={"model": "adapter", "input": ["a", " "]}),
                               400)
        assert error["message"].startswith("input[1] is empty")
        assert httpx.post(f"{url}/v1/classifications", json={"model": "adapter", "input": "milk"}).status_code == 200
        # label scoring's model writes its labels: it continues a prompt
        assert httpx.post(f"{url}/v1/completions", json={"model": "adapter", "prompt": "Milk"}).status_code == 200


def test_a_classification_head_writes_no_text(head_classifier):
    with running(load_trained(head_classifier)) as (url, _):
        error = one_line_error(httpx.post(f"{url}/v1/completions", json={"model": "adapter", "prompt": "Milk"}), 400)
        assert error["code"] == "not_a_text_model" and error["message"].endswith("ask /v1/classifications")


def test_a_full_queue_answers_503_with_retry_after_and_the_waiting_requests_are_answered(loaded_chatter):
    with running(loaded_chatter, window_ms=1500, max_queue=2) as (url, app):
        results: list[httpx.Response] = []
        waiting = [threading.Thread(target=lambda: results.append(httpx.post(f"{url}/v1/chat/completions", json=CHAT,
                                                                             timeout=30)))
                   for _ in range(2)]
        for thread in waiting:
            thread.start()
        deadline = time.monotonic() + 1.2
        while len(app.state.batcher.waiting) < 2:  # both wait in the batch's window
            assert time.monotonic() < deadline, "the two requests did not arrive within the window"
            time.sleep(0.01)
        response = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30)
        error = one_line_error(response, 503)
        assert error["code"] == "queue_full" and response.headers["retry-after"] == "1"
        for thread in waiting:
            thread.join()
        assert [r.status_code for r in results] == [200, 200]


def test_a_request_past_its_time_gets_504_whole_or_streamed_and_leaves_the_model(loaded_chatter):
    with running(loaded_chatter, window_ms=1000, timeout_s=0.3) as (url, app):
        ran = []
        app.state.batcher.runners["generate"] = ran.append
        start = time.monotonic()
        error = one_line_error(httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30), 504)
        assert error["code"] == "timeout" and "0.3 s" in error["message"] and time.monotonic() - start < 0.9
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30) as response:
            lines = [line for line in response.iter_lines() if line]
        assert response.status_code == 200 and '"code": "timeout"' in lines[-1] and "[DONE]" not in lines[-1]
        assert not app.state.batcher.waiting and httpx.get(f"{url}/health").json()["waiting"] == 0
        time.sleep(1.1)  # the window the cancelled requests would have run in
        assert ran == []  # gone from the queue: the model never worked for them


def test_a_slow_client_holding_a_stream_open_does_not_hold_up_the_others(server):
    url, _ = server
    body = {**CHAT, "max_tokens": 60, "stream": True}
    with httpx.Client(timeout=30) as slow, slow.stream("POST", f"{url}/v1/chat/completions", json=body,
                                                          headers=AUTH) as held:
        first = next(held.iter_lines())
        assert first.startswith("data: {")
        for _ in range(3):  # the held stream is not read on; the others are answered meanwhile
            answers_normally(url)
    answers_normally(url)
