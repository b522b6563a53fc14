"""An interactive terminal chat with a generation-task adapter; the answer's tokens appear as they are made."""

from __future__ import annotations

import sys
from typing import Callable, TextIO

import torch
from transformers import TextStreamer

from finetune.deliver.trained import TrainedRun
from finetune.errors import PipelineError
from finetune.text.chat import conversation_prompt_ids
from finetune.text.prompts import end_token_id

SPEAKERS = {"user": "you", "assistant": "model"}  # how the terminal names the turns (a system turn by its role)
HELP = "type a message and Enter; /reset starts over, /exit (or Ctrl-D) ends"


class _Streamer(TextStreamer):
    """transformers' streamer, writing to any text stream (a terminal, or a test's buffer)."""

    def __init__(self, tokenizer, output: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.output = output

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.output.write(text + ("\n" if stream_end else ""))
        self.output.flush()


@torch.no_grad()
def reply(run: TrainedRun, model, tokenizer, history: list[dict], max_new_tokens: int, no_repeat_ngram_size: int,
          output: TextIO) -> str:
    """Stream the model's answer to `history` (ending with the user's turn) and return it."""
    prompt = run.prompt
    ids = conversation_prompt_ids(tokenizer, history, prompt.system, prompt.chat_template, run.max_length)
    streamer = _Streamer(tokenizer, output)
    options = {"no_repeat_ngram_size": no_repeat_ngram_size} if no_repeat_ngram_size > 0 else {}
    out = model.generate(input_ids=torch.tensor([ids], device=model.device), max_new_tokens=max_new_tokens,
                         do_sample=False, use_cache=True, eos_token_id=end_token_id(tokenizer),
                         pad_token_id=tokenizer.pad_token_id, streamer=streamer, **options)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()


def chat_loop(run: TrainedRun, model, tokenizer, max_new_tokens: int = 256, no_repeat_ngram_size: int = 4,
              read: Callable[[str], str] = input, output: TextIO = sys.stdout,
              history: list[dict] | None = None) -> list[dict]:
    """Read a line, answer it, until /exit or end of input; returns the conversation. `history` (ending with a user
    turn) is shown and answered first."""
    if not run.kind.can_chat:
        raise PipelineError(f"{run.folder} was trained for a {run.kind.name} task ({run.info['task']['name']}), not "
                            "to chat; use `finetune predict` with it, or chat with a generation task's adapter")
    output.write(f"chatting with {run.folder} ({run.info['task']['name']}); {HELP}\n")
    history = list(history or [])
    for m in history:
        output.write(f"{SPEAKERS.get(m['role'], m['role'])}> {m['content']}\n")
    if history:
        output.write("model> ")
        history.append({"role": "assistant", "content": reply(run, model, tokenizer, history, max_new_tokens,
                                                              no_repeat_ngram_size, output)})
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            output.write("\n")
            return history
        if line in ("/exit", "/quit"):
            return history
        if line == "/reset":
            history = []
            output.write("(conversation cleared)\n")
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        output.write("model> ")
        answer = reply(run, model, tokenizer, history, max_new_tokens, no_repeat_ngram_size, output)
        history.append({"role": "assistant", "content": answer})
