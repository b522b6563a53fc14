"""`prompt_completion`: TRL's prompt-completion pairs, plain (`prompt` and `completion` strings) or conversational
(each a list of {role, content} turns: the conversation so far, and the assistant's answer).

    {"prompt": "...", "completion": "..."}
    {"prompt": [{"role": "user", "content": "..."}], "completion": [{"role": "assistant", "content": "..."}]}

`data.input_field` names the prompt (default `prompt`), `data.target_field` the completion (default `completion`);
`data.keys` renames `role` and `content`; `data.roles` maps other role names.
"""

from __future__ import annotations

from finetune.data.conversations import BadRow, is_list
from finetune.data.formats import ConversationFormat, register, turn


class PromptCompletion(ConversationFormat):
    name = "prompt_completion"
    fields = ("prompt", "completion")
    keys = {"role": "role", "content": "content"}
    describe = "'prompt' and 'completion' columns, each text or a list of turns"

    def conversation(self, row, names, roles, answered=True):
        prompt = self._part(row.get(names["prompt"]), "user", names, roles)
        return prompt + self._part(row.get(names["completion"]), "assistant", names, roles) if answered else prompt

    def _part(self, value, role: str, names, roles) -> list[dict]:
        if not is_list(value):
            return [turn(role, value, {})]
        if not all(isinstance(t, dict) for t in value):
            raise BadRow("not_a_list", "a prompt or completion list holds something other than {role, content} turns")
        return [turn(t.get(names["role"]), t.get(names["content"]), roles) for t in value]


register(PromptCompletion())
