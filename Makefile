# overstay: set-up, tests, benchmarks and the demo. `make help` lists the targets.
SHELL := /bin/bash
PY    := .venv/bin/python
PIP   := .venv/bin/pip
MPVM  := tests/mpvm
# Root runs apt-get itself; anyone else goes through sudo.
SUDO  := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# MicroPython type stubs, one folder per port: each package ships its own
# machine.pyi and friends, so two ports cannot share one site-packages.
MP_STUBS_VERSION := 1.27.0.post1
STUB_PORTS       := esp32 rp2

# Stamps live inside what they describe, so deleting .venv, node_modules or
# build/ redoes that step and nothing else; an unchanged tree is a no-op.
VENV_STAMP  := .venv/.overstay-installed
NPM_STAMP   := $(MPVM)/node_modules/.overstay-installed
STUB_STAMPS := $(foreach p,$(STUB_PORTS),build/stubs/$(p)/.installed-$(MP_STUBS_VERSION))

.PHONY: help setup debs test test-fast compile typecheck bench demo clean

help:
	@echo "make setup     create .venv, install the project and dev tools, the MicroPython VM, stubs and mosquitto"
	@echo "make test      setup, then compile device code with mpy-cross, type-check, run the whole suite"
	@echo "make bench     run the benchmarks and print their numbers"
	@echo "make chaos     fault-injection runs: RUNS=1000 JOBS=2, or SEED=123 to replay one"
	@echo "make demo      run the demo site end to end"

setup: $(VENV_STAMP) $(NPM_STAMP) $(STUB_STAMPS) debs

# pyvenv.cfg is written once per venv (bin/python is a symlink whose mtime is the interpreter's).
.venv/pyvenv.cfg:
	python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip

$(VENV_STAMP): pyproject.toml .venv/pyvenv.cfg
	$(PIP) install --quiet -e '.[dev]'
	@touch $@

$(NPM_STAMP): $(MPVM)/package.json | debs
	cd $(MPVM) && npm install --no-audit --no-fund --loglevel=error
	@touch $@

build/stubs/%/.installed-$(MP_STUBS_VERSION): | $(VENV_STAMP)
	rm -rf build/stubs/$*
	$(PIP) install --quiet --no-compile --target build/stubs/$* 'micropython-$*-stubs==$(MP_STUBS_VERSION)'
	@touch $@

# Debian packages the suite drives for real (mosquitto) and node for the
# MicroPython VM; checked every time (it takes milliseconds), installed only when missing.
debs:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || missing="$$missing mosquitto"; \
	command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

compile: setup
	$(PY) -m host_tools.build --check

typecheck: setup
	$(PY) -m host_tools.typecheck

test: setup compile typecheck
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -x -m "not slow"

bench: setup
	$(PY) -m bench

# The fault-injection suite beyond the few seeds in `make test` (docs/testing.md):
# make chaos SEED=123 replays one run; make chaos RUNS=1000 JOBS=2 [FIRST=1] [MODE=mem|broker].
.PHONY: chaos
chaos: setup
	$(PY) -m tests.chaos $(if $(SEED),--seed $(SEED),--runs $(or $(RUNS),100) --first $(or $(FIRST),1) --jobs $(or $(JOBS),1)) \
	  $(if $(MODE),--mode $(MODE)) $(CHAOS_ARGS)

clean:
	rm -rf .venv .stamps $(MPVM)/node_modules build .pytest_cache .hypothesis .mypy_cache

# The demo (docs/demo.md): a broker, the bridge, a simulated site under a live
# view, the billing summary and exports. Optional: SPEED=X (simulated seconds
# per real second; default: about a minute), SCENARIO=FILE, BROKER=mosquitto|amqtt,
# DEMO_ARGS="--plain ...". Setup first; when it cannot finish (no apt, so no
# mosquitto), .venv alone is enough: the embedded broker stands in.
demo:
	@$(MAKE) --no-print-directory setup || { $(MAKE) --no-print-directory $(VENV_STAMP) && \
	  echo "make demo: setup did not finish (see above); going on with .venv alone" >&2; }
	$(PY) -m host_tools.demo $(if $(SPEED),--speed $(SPEED)) $(if $(SCENARIO),--scenario $(SCENARIO)) \
	  $(if $(BROKER),--broker $(BROKER)) $(DEMO_ARGS)

# Flash and enrol one stall controller (docs/flashing.md). Optional: DB=URL,
# WIFI_SSID=..., WIFI_PASSWORD_FILE=..., FLASH_ARGS="--dry-run" (or --replace, ...).
.PHONY: flash
flash: $(VENV_STAMP)
	@if [ -z "$(PORT)" ] || [ -z "$(STATION)" ] || [ -z "$(SITE)" ] || [ -z "$(BROKER)" ]; then \
	  echo "usage: make flash PORT=/dev/ttyUSB0 STATION=st-01 SITE=lot-a BROKER=mqtt://broker:1883 [DB=sqlite:///bridge.db] [WIFI_SSID=net WIFI_PASSWORD_FILE=file] [FLASH_ARGS=--dry-run]" >&2; \
	  exit 2; \
	fi
	$(PY) -m host_tools.cli flash --port "$(PORT)" --station "$(STATION)" --site "$(SITE)" --broker "$(BROKER)" \
	  $(if $(DB),--db "$(DB)") $(if $(WIFI_SSID),--wifi-ssid "$(WIFI_SSID)") \
	  $(if $(WIFI_PASSWORD_FILE),--wifi-password-file "$(WIFI_PASSWORD_FILE)") $(FLASH_ARGS)
