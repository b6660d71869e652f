# Included right after llama.cpp's project() when llama-cpp-python compiles it (see the Makefile).
# llama-cpp-python forces llama.cpp's "common" library on (argument parsing, chat templates,
# an HTTP client for its command-line tools); its Python bindings load only libllama/libggml,
# and common is about half of the compile. A normal variable shadows the forced cache entry.
set(LLAMA_BUILD_COMMON OFF)
