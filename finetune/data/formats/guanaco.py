"""`guanaco`: '### Human: ... ### Assistant: ...' texts (OpenAssistant guanaco) in `data.input_field`; a trailing
human turn with no answer is dropped."""

from __future__ import annotations

import re

from finetune.data.conversations import blank, clean_message, needs_cleaning, window
from finetune.data.examples import require_column
from finetune.data.formats import Format, register
from finetune.errors import PipelineError

GUANACO_TURN = re.compile(r"###\s*(Human|Assistant)\s*:", re.IGNORECASE)


class Guanaco(Format):
    name = "guanaco"

    def read(self, table, origin, data):
        text_field = data.input_field
        require_column(table, origin, text_field, "data.input_field")
        out = []
        for row, text in enumerate(table[text_field], start=1):
            if blank(text):
                raise PipelineError(f"{origin}: row {row} has an empty '{text_field}'; fix or remove that row")
            parts = GUANACO_TURN.split(str(text))
            normalised = needs_cleaning(parts[2::2])
            turns = [{"role": "user" if who.lower() == "human" else "assistant", "content": clean_message(content)}
                     for who, content in zip(parts[1::2], parts[2::2])]
            while turns and turns[-1]["role"] != "assistant":
                turns.pop()
            turns = [t for t in turns if t["content"]]
            if not any(t["role"] == "user" for t in turns):
                raise PipelineError(f"{origin}: row {row} has no '### Human: ... ### Assistant: ...' exchange "
                                    f"in '{text_field}'; fix or remove that row")
            out.append({"index": row - 1, "messages": window(turns, data.turns), "group": None,
                        "normalised": normalised})
        return out, {}


register(Guanaco())
