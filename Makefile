# Every target that needs the venv depends on `install`, so each works on a fresh clone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SWEEP   ?=
COUNT   ?=
AGENTS  ?=
GPUS    ?=
OUT     ?= exports/$(SWEEP)
FORCE   ?=
ARGS    ?=
MINUTES ?= 12  # make sweep starts no new run after this (what a run takes on 2 cores: docs/backgrounds.md)
# absolute: tests and agents run in other folders, where a relative path would find nothing
export ASL_SWEEP_DATA_DIR ?= $(abspath $(wildcard ../shared/data/sign-language-digits))

BENCH_MINUTES ?= 30
SEARCH_MINUTES ?= 10
SEARCH_SEEDS ?= 3
REPLAYS ?= 200
METHODS ?= bayes random optuna kt  # replay specs: name[:key=value,...] (docs/replay.md)
SURROGATE ?=  # SURROGATE=1: the replay targets replay on the table's surrogate (bench/surrogate.py)

.PHONY: install test train sweep agent report export bench bench-search bench-dashboard bench-replay bench-replay-table bench-replay-all docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip check
	touch $(STAMP)

test: install
	$(BIN)/ruff check asl_sweep bench tests examples
	$(BIN)/pytest -q -n auto

train: install
	$(BIN)/asl-sweep train $(ARGS)

# two agents of one thread each by default: this small CNN runs ~2x the runs per minute that way on 2 cores
sweep: install
	$(BIN)/asl-sweep sweep sweeps/bayes.yaml --local --run --agents $(or $(AGENTS),2) --minutes $(MINUTES) $(if $(GPUS),--gpus $(GPUS))

agent: install
	@test -n "$(SWEEP)" || { echo "usage: make agent SWEEP=<id> [COUNT=n] [AGENTS=k] [GPUS=0,1,...] [ARGS=...]"; exit 2; }
	$(BIN)/asl-sweep agent $(SWEEP) $(if $(AGENTS),--agents $(AGENTS)) $(if $(GPUS),--gpus $(GPUS)) $(if $(COUNT),--count $(COUNT)) $(ARGS)

report: install
	@test -n "$(SWEEP)" || { echo "usage: make report SWEEP=<id>"; exit 2; }
	$(BIN)/asl-sweep report $(SWEEP) $(ARGS)

export: install
	@test -n "$(SWEEP)" || { echo "usage: make export SWEEP=<id> [OUT=dir] [FORCE=1] [ARGS=--retrain]"; exit 2; }
	$(BIN)/asl-sweep export $(SWEEP) --out $(OUT) $(if $(FORCE),--force) $(ARGS)

$(VENV)/.bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python bench/bench.py --minutes $(BENCH_MINUTES)

# ~70 min on 2 cores with the defaults: 4 methods x SEARCH_SEEDS x SEARCH_MINUTES, two at a time, then re-training
bench-search: $(VENV)/.bench
	$(BIN)/python bench/search.py --minutes $(SEARCH_MINUTES) --seeds $(SEARCH_SEEDS)

# the generated references: docs/cli.md from the parser, docs/config.md from Config (`make test` fails when stale)
docs: install
	$(BIN)/cog -r docs/cli.md docs/config.md

# the replay benchmark (docs/replay.md): the table from the stored replays, re-running 2 per method as a check
bench-replay: $(VENV)/.bench
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/python bench/replay.py --check 2 --methods $(METHODS) \
	  $(if $(SURROGATE),--surrogate --plot docs/replay-surrogate.png,--plot docs/replay.png)

# training the table: ~2 h on 2 cores (two one-thread processes); resumable
bench-replay-table: $(VENV)/.bench
	for i in 0 1; do ASL_SWEEP_THREADS=1 $(BIN)/python bench/replay_table.py --shard $$i/2 & done; wait

# every replay (200 per method, 40 simulated minutes each; two processes), appended to bench/replay/results.jsonl
# (results-surrogate.jsonl with SURROGATE=1); resumable
bench-replay-all: $(VENV)/.bench
	for i in 0 1; do OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/python bench/replay.py --run --shard $$i/2 \
	  --replays $(REPLAYS) --methods $(METHODS) $(if $(SURROGATE),--surrogate) & done; wait

# ~8 min on 2 cores: agents on SQLite and PostgreSQL with and without a dashboard polling (docs/dashboard.md)
bench-dashboard: install
	$(BIN)/python bench/bench.py --only dashboard

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
