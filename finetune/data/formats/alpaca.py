"""`alpaca`: an instruction, an optional input and the output a row (Stanford Alpaca's layout), with an optional
`system` column and `history`, the earlier [instruction, output] pairs of the conversation (LLaMA-Factory's).

    {"instruction": "...", "input": "...", "output": "..."}

The user's turn is the instruction, then a line break and the input when there is one. `data.input_field` names the
instruction (default `instruction`), `data.target_field` the output (default `output`); `data.keys` renames `input`,
`system` and `history`.
"""

from __future__ import annotations

from finetune.data.conversations import BadRow, blank, is_list, text_of
from finetune.data.formats import ConversationFormat, register, turn


class Alpaca(ConversationFormat):
    name = "alpaca"
    fields = ("instruction", "output")
    keys = {"input": "input", "system": "system", "history": "history"}
    describe = "'instruction' and 'output' columns, an optional 'input'"

    def conversation(self, row, names, roles, answered=True):
        messages = []
        system = row.get(names["system"])
        if not blank(system):
            messages.append(turn("system", system, {}))
        history = row.get(names["history"])
        if not blank(history):
            if not is_list(history) or not all(is_list(pair) and len(pair) == 2 for pair in history):
                raise BadRow("not_a_list", f"'{names['history']}' is not a list of [instruction, output] pairs")
            for question, answer in history:
                messages += [turn("user", question, {}), turn("assistant", answer, {})]
        instruction = text_of(row.get(names["instruction"])) or ""
        extra = row.get(names["input"])
        prompt = f"{instruction}\n{text_of(extra)}" if not blank(extra) and instruction.strip() else instruction
        messages.append(turn("user", prompt if prompt.strip() else None, {}))
        if answered:
            messages.append(turn("assistant", row.get(names["output"]), {}))
        return messages


register(Alpaca())
