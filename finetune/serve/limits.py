"""What the server allows a request, and the answer when a request goes past it: OpenAI's error shape, one line."""

from __future__ import annotations

import hmac
import json
from typing import Annotated

from pydantic import Field

from finetune.param_schemas import Count, Count0, Positive, Section

API_KEY_ENV = "FINETUNE_API_KEY"  # the key, when --api-key is not given
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Limits(Section):
    """`finetune serve`'s numbers, checked like params."""

    window_ms: Annotated[float, Field(ge=0)]
    """how long the first request of a batch waits for others to join it"""
    max_batch: Count
    """the most requests (classification: texts) run through the model together"""
    max_queue: Count
    """the most requests waiting for the model; past it a request is answered 503 with Retry-After"""
    timeout_s: Positive
    """the longest a request may take, waiting included; past it 504"""
    max_tokens: Count
    """the most tokens a request may ask to be generated (and what it gets when it names none)"""
    max_body_kib: Count
    """the largest request body; past it 413"""
    memory_gib: Positive
    """label scoring's working memory per batch, as `finetune predict --memory-gib`"""
    no_repeat_ngram_size: Count0 = 4
    """a chat answer may not repeat any run of this many tokens, as `finetune predict` and `chat` answer (0 = off;
    completions are not held to it)"""


class ApiError(Exception):
    """A request the server answers with an error: the HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object; the message is one line whatever it quotes."""
    return {"error": {"message": " ".join(message.split()), "type": type, "param": param, "code": code}}


class Guard:
    """ASGI middleware: the API key (when one is set) on every /v1/ path, and the body size on every request, checked
    before the application reads anything, so a request without the key or with a huge body costs nothing."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key and scope["path"].startswith("/v1/") and not self._key_matches(headers):
            return await _answer(send, 401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' "
                                            "with the key the server was started with", "authentication_error",
                                 code="invalid_api_key")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return await _answer(send, 413, self._too_large(), code="request_too_large")
        body, more = [], True
        size = 0
        while more:  # read the whole body here (up to the limit): a body sent in chunks has no length to check
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([], message, receive), send)
            body.append(message.get("body", b""))
            size += len(body[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                return await _answer(send, 413, self._too_large(), code="request_too_large")
        await self.app(scope, _replay(body, None, receive), send)

    def _key_matches(self, headers: dict[str, str]) -> bool:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self.api_key.encode())

    def _too_large(self) -> str:
        return f"the request body is larger than the server's limit of {self.max_body_bytes // 1024} KiB (--max-body-kib)"


def _replay(chunks: list[bytes], last: dict | None, receive):
    """A `receive` that hands the body read already, then what the connection says next (a disconnect)."""
    pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}] if last is None else [last]

    async def replayed():
        if pending:
            return pending.pop()
        return await receive()
    return replayed


async def _answer(send, status: int, message: str, type: str = "invalid_request_error", code: str | None = None):
    body = json.dumps(error_body(message, type, None, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def check_host(host: str, api_key: str | None, allow_unauthenticated: bool) -> str | None:
    """Why the server must not listen on `host` as asked, or None: beyond this machine only with a key, or when the
    user says so."""
    if host in LOOPBACK or api_key or allow_unauthenticated:
        return None
    return (f"--host {host} would answer anyone who can reach this machine, and no API key is set; pass --api-key "
            f"(or set {API_KEY_ENV}), or --allow-unauthenticated if the network in front of it is trusted")

