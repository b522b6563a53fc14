"""`sharegpt`: one conversation a row, a list of {from, value} turns with `human`, `gpt` and `system` speakers (the
layout Axolotl and LLaMA-Factory read), and optionally a `system` column beside it.

    {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}

`data.input_field` names the list (default `conversations`); `data.keys` renames `from`, `value` and the `system`
column; `data.roles` maps other speaker names (e.g. {user: user, assistant: assistant, bot: assistant}).
"""

from __future__ import annotations

from finetune.data.conversations import BadRow, blank
from finetune.data.formats import ConversationFormat, holds_turns, register, turn, turn_list


class ShareGPT(ConversationFormat):
    name = "sharegpt"
    fields = ("conversations",)
    keys = {"from": "from", "value": "value", "system": "system"}
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    describe = "a 'conversations' list of {from, value} turns"

    def conversation(self, row, names, roles, answered=True):
        turns = turn_list(row.get(names["conversations"]), names["conversations"])
        if not all(isinstance(t, dict) for t in turns):
            raise BadRow("not_a_list", f"'{names['conversations']}' holds something other than {{from, value}} turns")
        messages = [turn(t.get(names["from"]), t.get(names["value"]), roles) for t in turns]
        system = row.get(names["system"])
        if not blank(system) and not (messages and messages[0]["role"] == "system"):
            messages = [turn("system", system, {"system": "system"})] + messages
        return messages

    def looks_like(self, rows):
        return super().looks_like(rows) and holds_turns(rows, "conversations", "from")


register(ShareGPT())
