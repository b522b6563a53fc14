"""`messages`: one conversation a row, a list of {role, content} turns (OpenAI's fine-tuning files, TRL's
conversational datasets, most chat datasets on the Hub).

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

`data.input_field` names the list (default `messages`); `data.keys` renames `role` and `content`; `data.roles` maps
other role names (e.g. {human: user, bot: assistant}).
"""

from __future__ import annotations

from finetune.data.conversations import BadRow
from finetune.data.formats import ConversationFormat, holds_turns, register, turn, turn_list


class Messages(ConversationFormat):
    name = "messages"
    fields = ("messages",)
    keys = {"role": "role", "content": "content"}
    describe = "a 'messages' list of {role, content} turns"

    def conversation(self, row, names, roles, answered=True):
        turns = turn_list(row.get(names["messages"]), names["messages"])
        if not all(isinstance(t, dict) for t in turns):
            raise BadRow("not_a_list", f"'{names['messages']}' holds something other than {{role, content}} turns")
        return [turn(t.get(names["role"]), t.get(names["content"]), roles) for t in turns]

    def looks_like(self, rows):
        return super().looks_like(rows) and holds_turns(rows, "messages", "role")


register(Messages())
