"""The requests the server takes and the answers it gives, in OpenAI's shapes (fields it does not use are ignored)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Stop = str | Annotated[list[str], Field(max_length=4)]


class Request(BaseModel):
    # strict: "max_tokens": "5" is a client's mistake to point out, not to guess at
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(Request):
    type: Literal["text"]
    text: str


class Message(Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(Request):
    include_usage: bool = False


class Generation(Request):
    """What chat and completion requests share."""

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: Stop | None = None
    seed: int | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1  # one answer a request
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> list[str]:
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop or []) if s]

    def wanted_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatRequest(Generation):
    messages: Annotated[list[Message], Field(min_length=1)]


class CompletionRequest(Generation):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ClassificationRequest(Request):
    model: str
    input: str | Annotated[list[str], Field(min_length=1)]
    top_k: Annotated[int, Field(ge=1)] = 3

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Answer:
    """The ids and shapes of one answer: a chat completion (`chat`) or a text completion, whole or in chunks."""

    def __init__(self, model: str, chat: bool):
        self.model, self.chat = model, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def whole(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
        choice = ({"message": {"role": "assistant", "content": text}} if self.chat else {"text": text})
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": [{"index": 0, **choice, "logprobs": None, "finish_reason": finish_reason}],
                "usage": usage(prompt_tokens, completion_tokens)}

    def chunk(self, text: str | None, finish_reason: str | None = None, first: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
            choice = {"delta": delta}
        else:
            choice = {"text": text or ""}
        return {"id": self.id, "object": f"{self.object}.chunk" if self.chat else self.object,
                "created": self.created, "model": self.model,
                "choices": [{"index": 0, **choice, "logprobs": None, "finish_reason": finish_reason}]}

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
        return {"id": self.id, "object": f"{self.object}.chunk" if self.chat else self.object,
                "created": self.created, "model": self.model, "choices": [],
                "usage": usage(prompt_tokens, completion_tokens)}


def model_list(names: list[str], created: int) -> dict:
    return {"object": "list", "data": [model_card(name, created) for name in names]}


def model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "finetune"}


def classifications(model: str, predictions: list[dict]) -> dict:
    """One entry per input, in order: what `finetune predict` writes for a row (label, probability, top_k)."""
    return {"id": f"clf-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model,
            "data": [{"index": i, "object": "classification", **p} for i, p in enumerate(predictions)]}
