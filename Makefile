# Everything a fresh clone needs: `make run` serves, `make test` tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test build deps system-deps clean bench

run: build
	$(VENV)/bin/mailfast

test: build system-deps
	$(PY) -m pytest -q

build: $(STAMP) mailfast/_parser.pyx
	$(PY) setup.py -q build_ext --inplace

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "Cython>=3.0" "setuptools>=77" wheel
	$(PY) -m pip install -q -e ".[test,bench]" --no-build-isolation
	touch $@

# Debian tools the end-to-end tests drive: swaks, Postfix's smtp-source and
# smtp-sink, and mutt to read what we wrote. Postfix's debconf question is
# preseeded so the install never waits for an answer.
system-deps:
	@if ! command -v swaks >/dev/null || ! command -v smtp-source >/dev/null \
	    || ! command -v mutt >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "postfix postfix/main_mailer_type select No configuration" \
	    | $$SUDO debconf-set-selections; \
	  $$SUDO apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    swaks postfix mutt >/dev/null; \
	fi

# Side by side with Postfix on this machine; prints one table, never fails on
# a missed target.
bench: build system-deps
	$(PY) bench/run.py

clean:
	rm -rf build $(VENV) mailfast/*.so mailfast/_parser.c *.egg-info
