"""The value types params.yaml's keys are declared with: closed choices, counts, shares, and the strict `Section`.

The allowed values of each closed choice are declared here once; `typing.get_args` lists them for errors and the
generated reference (docs/reference/params.md).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMATS = Literal["table", "chitchat", "persona_chat", "guanaco", "messages", "sharegpt", "alpaca", "prompt_completion",
                  "auto"]  # finetune.data.formats: a module each (auto: one of the conversation formats, detected)
ROLES = Literal["system", "user", "assistant"]
CHAT_TEMPLATES = Literal["auto", "plain"]
LABEL_METHODS = Literal["label_scoring", "generation"]
OBJECTIVES = Literal["label_scoring", "head"]  # finetune/kinds/classification: a module each
QUANT_TYPES = Literal["nf4", "fp4"]
MERGE_INTO = Literal["dequantized", "original"]
GGUF_TYPES = Literal["f32", "f16", "bf16", "q8_0"]  # llama.cpp converter's --outtype choices that need no build
METHODS = Literal["qlora", "lora", "full"]
LORA_INITS = Literal["default", "gaussian", "pissa", "olora", "loftq"]
STRATEGIES = Literal["ddp", "fsdp"]
LR_SCALINGS = Literal["sqrt", "none"]

Count = Annotated[int, Field(ge=1)]             # 1, 2, ...
Count0 = Annotated[int, Field(ge=0)]            # 0, 1, ...
Positive = Annotated[float, Field(gt=0)]        # any number above 0
Share = Annotated[float, Field(ge=0, lt=1)]     # a fraction: 0 <= x < 1
Text = Annotated[str, Field(min_length=1)]      # a non-empty string
Switch = bool | Literal["auto"]


class Section(BaseModel):
    """A part of params.yaml: no unknown key, no value of the wrong type (no '8' for 8); a key without a default
    must be there."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, use_attribute_docstrings=True,
                              validate_default=True)
