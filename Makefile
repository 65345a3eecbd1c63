# Provenance Gateway: every target bootstraps what it needs (virtualenv, Python packages, Mosquitto).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench system-deps browser-deps node-deps clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

# Debian packages: installed when we can (root with apt-get), else we say how. $(1): a command
# that must exist afterwards, $(2): the packages, $(3): what they are for.
define apt_need
	@if ! command -v $(1) >/dev/null 2>&1 && ! test -x /usr/sbin/$(1); then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(2) from Debian's packages ($(3))"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	  else \
	    echo "$(1) is missing ($(3)). Install it (Debian/Ubuntu: sudo apt-get install $(2)) and run make again." >&2; \
	    exit 1; \
	  fi; \
	fi
endef

# Mosquitto: the broker of make demo, the tests and the benchmarks.
system-deps:
	$(call apt_need,mosquitto,mosquitto,the MQTT broker)
	$(call apt_need,systemd-analyze,systemd,checking deploy/provgw.service offline)

# A real headless Chromium and its driver: only the web UI tests need them.
browser-deps:
	$(call apt_need,chromium,chromium chromium-driver,the web UI tests)
	$(call apt_need,chromedriver,chromium-driver,the web UI tests)

# The chain tests start a real local JSON-RPC node (ganache) and check the committed contract
# artifacts against a rebuild with the pinned solc: both come from npm, per contracts/package-lock.json.
NODE_STAMP := contracts/node_modules/.installed-stamp
$(NODE_STAMP): contracts/package.json contracts/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm is missing. Install Node.js 18+ with npm (Debian/Ubuntu: sudo apt-get install nodejs npm) and run make again." >&2; exit 1; }
	cd contracts && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

node-deps: $(NODE_STAMP)

demo: $(STAMP) system-deps
	$(BIN)/provgw-sim demo

test: $(STAMP) system-deps browser-deps node-deps
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP) system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
