"""`table`: prompt / response pairs, one user turn and one assistant turn a row (`data.input_field`,
`data.target_field`). A row with an empty prompt or response is refused with the row's number."""

from __future__ import annotations

from finetune.data.conversations import blank, clean_message, needs_cleaning
from finetune.data.examples import require_column
from finetune.data.formats import Format, register
from finetune.errors import PipelineError


class Table(Format):
    name = "table"

    def read(self, table, origin, data):
        prompt_field, response_field = data.input_field, data.target_field
        require_column(table, origin, prompt_field, "data.input_field")
        require_column(table, origin, response_field, "data.target_field")
        out = []
        for row, (prompt, response) in enumerate(zip(table[prompt_field], table[response_field]), start=1):
            if blank(prompt):
                raise PipelineError(f"{origin}: row {row} has an empty '{prompt_field}' (the prompt); "
                                    "fix or remove that row")
            if blank(response):
                raise PipelineError(f"{origin}: row {row} has an empty '{response_field}' (the response); "
                                    "fix or remove that row")
            out.append({"index": row - 1, "messages": [{"role": "user", "content": clean_message(prompt)},
                                     {"role": "assistant", "content": clean_message(response)}],
                        "group": None, "normalised": needs_cleaning(prompt, response)})
        return out, {}


register(Table())
