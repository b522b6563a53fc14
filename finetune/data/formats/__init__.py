"""Data formats of conversation files, one module each, chosen by a task's `data.format`.

A format turns the rows of a source table into conversations ({role, content} messages ending with the assistant's
turn). Adding a format is adding a module named after it to this package: a `Format` subclass passed to `register`,
and its name in `param_schemas.FORMATS`. A format's module is imported when the format is first asked for.

The conversation-file formats (`messages`, `sharegpt`, `alpaca`, `prompt_completion`) read one conversation a row
through `ConversationFormat.conversation`; a row that is not one is dropped and counted by reason
(`conversations.DROP_REASONS`), and a file where no row is one is refused with the first row's reason. `auto`
picks one of them from the file's first rows.
"""

from __future__ import annotations

import importlib
import pkgutil

import pandas as pd

from finetune.data.conversations import (DROP_REASONS, NO_USER_TURN, ROLES, BadRow, blank, checked, clean_message,
                                         is_list, needs_cleaning, text_of)
from finetune.data.examples import require_column
from finetune.errors import PipelineError

AUTO = "auto"
SNIFF_ROWS = 20  # how many first rows `auto` looks at


class Format:
    """How rows of one layout become conversations."""

    name: str

    def read(self, table: pd.DataFrame, origin: str, data) -> tuple[list[dict], dict[str, int]]:
        """Rows {index (the row's position in the table), messages, group (or None), normalised} in the table's
        order, and the rows dropped per reason (an empty dict for a format that refuses a bad row instead)."""
        raise NotImplementedError


class ConversationFormat(Format):
    """A file with one conversation a row, its fields named by `fields` (the first is `data.input_field`'s, the
    second, if any, `data.target_field`'s), other keys by `keys`; `data.keys` and `data.roles` rename them."""

    fields: tuple[str, ...] = ()    # the default names of the fields input_field and target_field name
    keys: dict[str, str] = {}       # other names the format reads, {what: default name}; data.keys renames them
    roles: dict[str, str] = {}      # the file's role names -> system, user or assistant; data.roles adds to them
    describe: str = ""              # what `auto` says it found

    def conversation(self, row: dict, names: dict[str, str], roles: dict[str, str],
                     answered: bool = True) -> list[dict]:
        """One row's messages (not yet cleaned or checked for order); BadRow if it cannot be read as turns.
        `answered=False`: the row may lack the answer (a file to predict), which is then not read."""
        raise NotImplementedError

    def prompt(self, row: dict, data) -> list[dict]:
        """A row's conversation up to its last user turn, cleaned: what a model answers (`finetune predict`, `chat`);
        BadRow if it is not one. `data`: the params the model was trained with."""
        raw = self.conversation(row, self.names(data), {**self.roles, **data.roles}, answered=False)
        messages = [{"role": m["role"], "content": clean_message(m["content"])} for m in raw]
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
        if not messages or messages[-1]["role"] != "user":
            raise BadRow(NO_USER_TURN, "no user turn to answer")
        return checked(messages + [{"role": "assistant", "content": "?"}], 0)[:-1]

    def names(self, data) -> dict[str, str]:
        """Field and key names as this task's params set them."""
        unknown = sorted(set(data.keys) - set(self.keys))
        if unknown:
            known = ", ".join(self.keys) or "none"
            raise PipelineError(f"data.keys has {', '.join(map(repr, unknown))}; the {self.name} format renames "
                                f"only {known}")
        given = [data.input_field, data.target_field]
        if len(self.fields) < 2 and data.target_field:
            raise PipelineError(f"data.target_field is '{data.target_field}'; a {self.name} row holds the whole "
                                "conversation, so leave it ''")
        fields = {f: given[i] or f for i, f in enumerate(self.fields)}
        return {**fields, **self.keys, **data.keys}

    def looks_like(self, rows: list[dict]) -> bool:
        """Whether the first rows of a file are in this format (for `auto`)."""
        return all(f in rows[0] for f in self.fields)

    def read(self, table, origin, data):
        names = self.names(data)
        for field, param in zip(self.fields, ("data.input_field", "data.target_field")):
            require_column(table, origin, names[field], param)
        roles = {**self.roles, **data.roles}
        rows, dropped, first_bad = [], dict.fromkeys(DROP_REASONS, 0), None
        for number, record in enumerate(table.to_dict("records"), start=1):
            try:
                raw = self.conversation(record, names, roles)
                messages = checked([{"role": m["role"], "content": clean_message(m["content"])} for m in raw],
                                   data.turns)
            except BadRow as bad:
                dropped[bad.reason] += 1
                first_bad = first_bad or (number, bad)
                continue
            rows.append({"index": number - 1, "messages": messages, "group": None,
                         "normalised": needs_cleaning(*(m["content"] for m in raw))})
        if not rows:
            number, bad = first_bad
            raise PipelineError(f"{origin}: no row reads as data.format {self.name}; row {number}: {bad.detail} "
                                f"({bad.reason}: {DROP_REASONS[bad.reason]}); check data.format, data.input_field, "
                                "data.keys and data.roles")
        return rows, dropped


def turn(role, content, roles: dict[str, str]) -> dict:
    """One {role, content} message from a file's role name and content (not yet cleaned); BadRow for an unknown role
    or content that is not text."""
    if not isinstance(role, str) or roles.get(role, role) not in ROLES:
        known = ", ".join(sorted(set(roles) | set(ROLES)))
        raise BadRow("unknown_role", f"a turn's role is {role!r}, not one of {known}")
    text = text_of(content)
    if text is None:
        raise BadRow("empty_content", f"its {roles.get(role, role)} turn has no text")
    return {"role": roles.get(role, role), "content": text}


def holds_turns(rows: list[dict], field: str, key: str) -> bool:
    """Whether the first row's `field` is a list of dicts with `key` (what `auto` looks for)."""
    value = rows[0].get(field)
    return is_list(value) and len(value) > 0 and isinstance(value[0], dict) and key in value[0]


def turn_list(value, field: str) -> list:
    """A field that must hold a list of turns (a Parquet file gives an array)."""
    if not is_list(value):
        what = "empty" if blank(value) else f"a {type(value).__name__}"
        raise BadRow("not_a_list", f"'{field}' is {what}, not a list of turns")
    return list(value)


_FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    _FORMATS[fmt.name] = fmt
    return fmt


def _module_names() -> set[str]:
    return {m.name for m in pkgutil.iter_modules(__path__)}


def get(name: str) -> Format:
    """The format of that name, its module imported if it was not yet."""
    if name not in _FORMATS and name in _module_names():
        importlib.import_module(f"{__name__}.{name}")
    if name not in _FORMATS:
        raise PipelineError(f"no data format is named {name!r}; the formats are {', '.join(sorted(_module_names()))}")
    return _FORMATS[name]


def detect(table: pd.DataFrame, origin: str) -> ConversationFormat:
    """The conversation format the first rows of `table` are in (`data.format: auto`), with its default names."""
    rows = table.head(SNIFF_ROWS).to_dict("records")
    candidates = [get(name) for name in sorted(_module_names())]
    found = [f for f in candidates if isinstance(f, ConversationFormat) and f.looks_like(rows)]
    if len(found) != 1:
        looked = "; ".join(f"{f.name}: {f.describe}" for f in candidates if isinstance(f, ConversationFormat))
        what = "none of" if not found else f"more than one of ({', '.join(f.name for f in found)})"
        raise PipelineError(f"{origin}: data.format is auto, and its first rows match {what} the conversation "
                            f"formats ({looked}); columns are: {', '.join(map(str, table.columns))}; "
                            "set data.format")
    return found[0]


def choose(table: pd.DataFrame, origin: str, data) -> Format:
    """The task's format (`data.format`); for `auto`, the one detected (and said)."""
    name = data.format
    if name != AUTO:
        fmt = get(name)
        if not isinstance(fmt, ConversationFormat) and (data.keys or data.roles):
            which = "data.keys" if data.keys else "data.roles"
            raise PipelineError(f"{which} is set, but the {name} format has no keys or roles to rename; leave it {{}} "
                                "(it is for the conversation formats: messages, sharegpt, alpaca, prompt_completion)")
        return fmt
    fmt = detect(table, origin)
    print(f"prepare: data.format auto: {origin} reads as {fmt.name} ({fmt.describe})")
    return fmt
