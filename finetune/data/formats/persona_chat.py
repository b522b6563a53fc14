"""`persona_chat`: persona lines (the system message) + dialogue history (`data.input_field`) -> reply
(`data.target_field`); a list of reply candidates ends with the true one.

Rows that share a persona come from one conversation, so the persona is the group the split keeps together.
"""

from __future__ import annotations

from finetune.data.conversations import alternate, blank, clean_message, is_list, needs_cleaning, window
from finetune.data.examples import normalise_text, require_column
from finetune.data.formats import Format, register
from finetune.errors import PipelineError

PERSONA_FIELDS = ("personality", "persona")


def _turns(value, origin: str, row: int, field: str) -> list[str]:
    """A list of turns from a list, an array or a newline-separated string."""
    if is_list(value):
        turns = [clean_message(v) for v in value]
    elif isinstance(value, str):
        turns = [clean_message(v) for v in clean_message(value).split("\n")]
    else:
        raise PipelineError(f"{origin}: row {row}: '{field}' is {type(value).__name__}; expected a list of turns")
    return [t for t in turns if t]


class PersonaChat(Format):
    name = "persona_chat"

    def read(self, table, origin, data):
        history_field, reply_field = data.input_field, data.target_field
        require_column(table, origin, history_field, "data.input_field")
        require_column(table, origin, reply_field, "data.target_field")
        persona_field = next((f for f in PERSONA_FIELDS if f in table.columns), None)
        if persona_field is None:
            raise PipelineError(f"{origin}: missing column 'personality' (the persona lines); "
                                f"columns are: {', '.join(map(str, table.columns))}")
        out = []
        for row, (persona, history, reply) in enumerate(
                zip(table[persona_field], table[history_field], table[reply_field]), start=1):
            if is_list(reply):
                reply = reply[-1] if len(reply) else None
            if blank(reply):
                raise PipelineError(f"{origin}: row {row} has no '{reply_field}' (the reply); fix or remove that row")
            normalised = needs_cleaning(persona, history, reply)
            persona_lines = _turns(persona, origin, row, persona_field) if not blank(persona) else []
            history = _turns(history, origin, row, history_field) if not blank(history) else []
            turns = window(history + [clean_message(reply)], data.turns)
            if len(turns) < 2:
                raise PipelineError(f"{origin}: row {row} has an empty '{history_field}' (the history); "
                                    "fix or remove that row")
            system = "Your persona: " + " ".join(persona_lines) if persona_lines else ""
            messages = ([{"role": "system", "content": system}] if system else []) + alternate(turns)
            out.append({"index": row - 1, "messages": messages, "group": normalise_text(system) or None,
                        "normalised": normalised})
        return out, {}


register(PersonaChat())
