"""One line per params.yaml error: the key, the value and everything that is allowed.

pydantic reports every problem with a location in its own terms (union members such as
`constrained-int`, the task's kind as a tag); this turns the first one into the line a user reads.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

_ALLOWED = {
    "int_type": "an integer", "int_from_float": "an integer", "float_type": "a number", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "string_too_short": "a non-empty string",
}


BOUNDS = {"ge": ">= {:g}", "gt": "> {:g}", "le": "<= {:g}", "lt": "< {:g}"}
BOUND_ERRORS = {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le", "less_than": "lt"}


def _range(field: Any) -> str:
    """Every bound a field declares (`>= 0 and < 1`), not only the one the value broke."""
    bounds = [BOUNDS[name].format(getattr(m, name)) for m in getattr(field, "metadata", []) for name in BOUNDS
              if getattr(m, name, None) is not None]
    return " and ".join(bounds)


def _allowed(error: dict, root: type[BaseModel], variants: dict[str, type[BaseModel]]) -> str:
    ctx, error_type = error.get("ctx") or {}, error["type"]
    if error_type in BOUND_ERRORS:
        loc = error["loc"]
        model = _model_at(root, variants, loc[:-1]) if not _is_union_member(loc[-1]) else None
        declared = _range(model.model_fields.get(loc[-1])) if model else ""
        name = BOUND_ERRORS[error_type]
        return declared or BOUNDS[name].format(ctx[name])
    if error_type == "too_short":
        return "a non-empty list" if ctx["min_length"] == 1 else f"at least {ctx['min_length']} items"
    if error_type == "literal_error":
        return ctx["expected"]
    return _ALLOWED.get(error_type, error["msg"][0].lower() + error["msg"][1:])


def _is_union_member(part: Any) -> bool:
    """pydantic names the member of a union it tried (`constrained-int`, `literal['all']`) in the error's location."""
    return isinstance(part, str) and (any(c in part for c in "[-'") or part in ("int", "float", "str", "bool"))


def _model_at(root: type[BaseModel], variants: dict[str, type[BaseModel]], loc: tuple) -> type[BaseModel] | None:
    """The model whose fields sit at `loc` (with pydantic's union tags still in it); `tasks.<name>.<kind>` is a variant."""
    cls: Any = root
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if cls is root and part == "tasks":
            if len(parts) < 2:
                return None
            cls = variants.get(parts[1])
            parts = parts[2:]
        elif isinstance(cls, type) and issubclass(cls, BaseModel) and part in cls.model_fields:
            cls = cls.model_fields[part].annotation
        else:
            return None
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _key(loc: tuple, variants: dict[str, type[BaseModel]]) -> str:
    parts = [p for p in loc if not _is_union_member(p)]
    if len(parts) > 2 and parts[0] == "tasks" and parts[2] in variants:
        del parts[2]
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def _show(value: Any) -> str:
    """A value as it is written in YAML."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value)


def _number_hint(value: Any) -> str:
    try:
        float(value)
    except (TypeError, ValueError):
        return ""
    return " (YAML reads this as text: write numbers like 1.0e-4, with a dot)" if isinstance(value, str) else ""


def error_line(e: ValidationError, where: str, root: type[BaseModel], variants: dict[str, type[BaseModel]]) -> str:
    """The first problem pydantic found in a file validated against `root`, as one line that names the key, the
    value and what is allowed; `variants` are the task entries by kind (pydantic puts the kind in the location)."""
    errors = e.errors(include_url=False)
    # A misspelt key is both unknown and missing: name the unknown one, with the keys that are known.
    errors = sorted(errors, key=lambda err: err["type"] not in ("extra_forbidden", "unexpected_keyword_argument"))
    first = _key(errors[0]["loc"], variants)
    group = [err for err in errors if _key(err["loc"], variants) == first]
    for err in group:
        error_type, loc = err["type"], err["loc"]
        if error_type == "missing":
            return f"{where}: missing key {first}"
        if error_type in ("extra_forbidden", "unexpected_keyword_argument"):
            model = _model_at(root, variants, loc[:-1])
            known = f"; known keys: {', '.join(model.model_fields)}" if model else ""
            return f"{where}: unknown key {first}{known}"
        if error_type == "union_tag_invalid":
            return f"{where}: {first}.kind is {err['ctx']['tag']!r}; use one of {', '.join(variants)}"
        if error_type == "union_tag_not_found":
            return f"{where}: missing key {first}.kind ({', '.join(variants)})"
        if error_type == "value_error":
            message = err["msg"].removeprefix("Value error, ")
            if isinstance(err["input"], dict):  # a check across keys: the message names them
                return f"{where}: {first + ': ' if first else ''}{message}"
            return f"{where}: {first} is {_show(err['input'])}; {message}"
    value = group[0]["input"]
    allowed = list(dict.fromkeys(_allowed(err, root, variants) for err in group))
    allowed = allowed[0] if len(allowed) == 1 else ", ".join(allowed[:-1]) + " or " + allowed[-1]
    return f"{where}: {first} is {_show(value)}; allowed: {allowed}{_number_hint(value)}"
