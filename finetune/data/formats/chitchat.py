"""`chitchat`: the Chit Chat Challenge corpus's conversations (a `turns` list a row); each gives one example, the
`data.turns` turns at its middle, the last one the response. A conversation of one turn has nothing to answer and
is left out."""

from __future__ import annotations

from finetune.data.conversations import alternate, clean_message, needs_cleaning
from finetune.data.formats import Format, register


class Chitchat(Format):
    name = "chitchat"

    def read(self, table, origin, data):
        out = []
        for index, turns in enumerate(table["turns"]):
            normalised = needs_cleaning(turns)
            turns = [t for t in (clean_message(x) for x in turns) if t]
            if len(turns) < 2:
                continue
            size = min(data.turns or len(turns), len(turns))
            start = (len(turns) - size) // 2
            out.append({"index": index, "messages": alternate(turns[start:start + size]), "group": None,
                        "normalised": normalised})
        return out, {}


register(Chitchat())
