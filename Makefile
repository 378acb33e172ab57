# heavylock: `make demo` runs the main job, `make test` passes every test.
# Both set up everything they need (venv, pip installs, build) on their own.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BUILD  := build/c
HEAVYLOCK := $(BUILD)/heavylock
SOURCES := $(wildcard include/*.h src/*.c src/*.h cli/*.c tests/c/*.c) meson.build meson.options
PYSOURCES := $(wildcard python/heavylock/*.py python/heavylock/*.c) pyproject.toml

.PHONY: all build test test-c test-py test-asan demo bench clean

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

test-c: build
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH meson test -C $(BUILD) --print-errorlogs

test-py: build $(VENV)/.pkg
	HEAVYLOCK_CLI=$(CURDIR)/$(HEAVYLOCK) $(PY) -m pytest -q -p no:cacheprovider tests/python

test: test-c test-py

# The C tests once under AddressSanitizer + UBSan (CI runs this too).
test-asan: $(VENV)/.deps
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH meson setup build/asan -Dpython=disabled \
	  -Db_sanitize=address,undefined -Db_lundef=false --reconfigure >/dev/null || \
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH meson setup build/asan -Dpython=disabled \
	  -Db_sanitize=address,undefined -Db_lundef=false
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  PATH=$(CURDIR)/$(VENV)/bin:$$PATH meson test -C build/asan --print-errorlogs

demo: build
	bash examples/cli-demo.sh $(CURDIR)/$(HEAVYLOCK)

bench: build $(VENV)/.pkg
	$(PY) bench/handoff.py --heavylock $(HEAVYLOCK)

clean:
	rm -rf build $(VENV)
