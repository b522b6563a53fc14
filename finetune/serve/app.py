"""The routes of `finetune serve` and its error answers: every error is OpenAI's error object with a one-line message
and the status that says whose fault it was, never a traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from finetune.errors import PipelineError
from finetune.serve.batcher import Batcher, Closed, Job, QueueFull
from finetune.serve.limits import ApiError, Guard, Limits, error_body
from finetune.serve.requests import (Answer, ChatRequest, ClassificationRequest, CompletionRequest, Generation,
                                     classifications, model_card, model_list)
from finetune.serve.served import Served

log = logging.getLogger("finetune.serve")
UNION_MEMBER = re.compile(r"^(str|int|float|bool|list|dict)$|[\[\-]")  # pydantic's names for a union's members


def build_app(served: Served, limits: Limits, api_key: str | None = None) -> FastAPI:
    """The application over a loaded model; its batcher's thread runs from startup until shutdown has drained it."""
    batcher = Batcher({"generate": served.generate, "predict": served.predict}, limits.window_ms / 1000,
                      limits.max_batch, limits.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await asyncio.to_thread(batcher.close)  # uvicorn has let the requests in flight finish; then the model stops

    app = FastAPI(title="finetune serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_kib * 1024)
    add_error_answers(app)

    def check_model(name: str) -> None:
        if not served.knows(name):
            raise ApiError(404, f"the model '{name}' is not served here; this server serves '{served.name}' "
                                "(GET /v1/models)", param="model", code="model_not_found")

    def submit(job: Job) -> None:
        try:
            batcher.submit(job)
        except QueueFull:
            raise ApiError(503, f"the server has {limits.max_queue} requests waiting already (--max-queue); retry "
                                "in a moment", "server_overloaded", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        except Closed:
            raise ApiError(503, "the server is shutting down", "server_overloaded", code="shutting_down",
                           headers={"Retry-After": "5"}) from None

    async def next_event(job: Job) -> tuple:
        """The job's next event from the model's thread, within the request's time."""
        try:
            event = await asyncio.wait_for(job.events.get(), job.arrived + limits.timeout_s - time.monotonic())
        except TimeoutError:
            batcher.cancel(job)
            raise ApiError(504, f"the request took longer than the server's limit of {limits.timeout_s:g} s "
                                "(--timeout-s)", "timeout", code="timeout") from None
        if event[0] == "error":
            raise ApiError(500, f"the model failed on this request's batch: {event[1]}", "server_error")
        return event

    async def generate(body: Generation, prompt_ids: list[int], chat: bool):
        room = served.context - len(prompt_ids)
        if room < 1:
            raise ApiError(400, f"the prompt is {len(prompt_ids)} tokens, and the model's context is "
                                f"{served.context}; shorten it", param="messages" if chat else "prompt",
                           code="context_length_exceeded")
        allowed = min(limits.max_tokens, room)
        wanted = body.wanted_tokens()
        if wanted is not None and wanted > allowed:
            why = (f"the server's limit (--max-tokens) is {limits.max_tokens}" if allowed == limits.max_tokens else
                   f"the prompt's {len(prompt_ids)} tokens leave {room} of the model's context of {served.context}")
            raise ApiError(400, f"max_tokens is {wanted}, but {why}", param="max_tokens", code="max_tokens_too_large")
        request = {"prompt_ids": prompt_ids, "max_tokens": wanted or allowed, "stop": body.stops(), "strip": chat,
                   "temperature": body.temperature, "top_p": body.top_p, "seed": body.seed,
                   "no_repeat_ngram_size": limits.no_repeat_ngram_size if chat else 0}
        job = Job("generate", request, asyncio.get_running_loop(), asyncio.Queue())
        submit(job)
        answer = Answer(served.name, chat)
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(stream(job, answer, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        parts = []
        try:
            while (event := await next_event(job))[0] == "text":
                parts.append(event[1])
        finally:
            batcher.cancel(job)  # whatever ended the wait (a timeout, the task cancelled), the row stops there
        return answer.whole("".join(parts), *event[1:])

    async def stream(job: Job, answer: Answer, usage: bool):
        try:
            yield sse(answer.chunk(None, first=True))
            while (event := await next_event(job))[0] == "text":
                yield sse(answer.chunk(event[1]))
            _, reason, prompt_tokens, completion_tokens = event
            yield sse(answer.chunk(None, reason))
            if usage:
                yield sse(answer.usage_chunk(prompt_tokens, completion_tokens))
            yield "data: [DONE]\n\n"
        except ApiError as e:  # the answer has begun with 200: the error goes in the stream, as OpenAI's does
            yield sse(e.body())
        finally:
            batcher.cancel(job)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served.name, "waiting": len(batcher.waiting)}

    @app.get("/v1/models")
    async def models():
        return model_list([served.name], served.created)

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        check_model(name)
        return model_card(served.name, served.created)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        check_model(body.model)
        if not served.chats:
            raise ApiError(400, f"'{served.name}' was trained for {served.task}, not to chat; "
                                f"{served_instead(served)}", param="messages", code="not_a_chat_model")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        if messages[-1]["role"] != "user":
            raise ApiError(400, "messages: the last message must be the user's, for the model to answer",
                           param="messages")
        try:
            ids = served.chat_ids(messages)
        except PipelineError as e:  # a chat template that refuses the conversation (e.g. a system turn)
            raise ApiError(400, f"messages: {e}", param="messages") from None
        return await generate(body, ids, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        check_model(body.model)
        if not served.writes_text:
            raise ApiError(400, f"'{served.name}' has a classification head: it scores labels and cannot write "
                                f"text; {served_instead(served)}", param="prompt", code="not_a_text_model")
        return await generate(body, served.completion_ids(body.text()), chat=False)

    @app.post("/v1/classifications")
    async def classify(body: ClassificationRequest):
        check_model(body.model)
        if not served.predicts_labels:
            raise ApiError(400, f"'{served.name}' was trained for {served.task}: it has no labels to classify "
                                f"into; {served_instead(served)}", param="input", code="not_a_classifier")
        texts = body.texts()
        blank = next((i for i, t in enumerate(texts) if not t.strip()), None)
        if blank is not None:
            raise ApiError(400, f"input[{blank}] is empty; send a text to classify", param="input")
        if len(texts) > limits.max_batch:
            raise ApiError(400, f"input has {len(texts)} texts; the server takes at most {limits.max_batch} a request "
                                "(--max-batch)", param="input")
        job = Job("predict", {"texts": texts, "top_k": body.top_k}, asyncio.get_running_loop(), asyncio.Queue(),
                  size=len(texts))
        submit(job)
        try:
            _, predictions = await next_event(job)
        finally:
            batcher.cancel(job)
        return classifications(served.name, predictions)

    return app


def served_instead(served: Served) -> str:
    """What the model does answer, for a request it cannot."""
    routes = ([("/v1/chat/completions", served.chats), ("/v1/completions", served.writes_text),
               ("/v1/classifications", served.predicts_labels)])
    return "ask " + " or ".join(route for route, answers in routes if answers)


def sse(data: dict) -> str:
    """One server-sent event, as OpenAI's streams send them."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def add_error_answers(app: FastAPI) -> None:
    """Every failure as OpenAI's error object with a one-line message."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        message, param = validation_line(e.errors())
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        message = f"{request.method} {request.url.path}: {e.detail}"
        return JSONResponse(error_body(message, "invalid_request_error"), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def failed(request: Request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)  # the traceback stays in the server's log
        first = str(e).splitlines()[0] if str(e) else ""
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {first}", "server_error"), status_code=500)


def validation_line(errors: list[dict]) -> tuple[str, str | None]:
    """The first thing wrong with a request body, as one line, and the field it is in."""
    # a value that fits no member of a union fails each member; a broken bound says more than a wrong type
    error = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
    if error["type"] == "json_invalid":
        return f"the request body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})", None
    where = ".".join(str(p) for p in error["loc"][1:] if not UNION_MEMBER.search(str(p)))
    if not where and error["type"] in ("model_attributes_type", "dict_type", "missing"):
        return "the request body must be a JSON object (sent as Content-Type: application/json)", None
    what = "field required" if error["type"] == "missing" else error["msg"][0].lower() + error["msg"][1:]
    return (f"{where}: {what}" if where else f"the request body: {what}"), where or None
