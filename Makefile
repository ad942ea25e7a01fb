# Parley: `make run` runs everything on embedded real servers behind HAProxy;
# `make test` runs every gate and the whole test suite.
# Node 20 from npm when the machine's is older (scripts/install.sh), first on PATH.
export PATH := $(CURDIR)/.tools/node/node_modules/.bin:$(PATH)
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install lint fmt typecheck lock bench clean

install: $(STAMP)
	@bash scripts/install.sh web

$(STAMP): pyproject.toml requirements.lock requirements-tools.lock scripts/install.sh
	bash scripts/install.sh
	@touch $@

run: install
	$(BIN)/python -m scripts.run

test: install
	bash scripts/check.sh

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

fmt: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy

# Re-pin after changing pyproject.toml (current pins are kept; delete a line of
# the lock to upgrade it). Every lock carries the hashes of every file of each
# pinned release, which every install checks (pip --require-hashes).
UVC := $(BIN)/uv pip compile --quiet --generate-hashes --no-annotate --no-strip-extras \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock"
lock: install
	$(UVC) --python-version 3.11 pyproject.toml requirements-build.in --extra embedded --extra dev \
	  -c requirements.lock -o requirements.lock
	$(UVC) --python-version 3.11 pyproject.toml requirements-build.in \
	  -c requirements.lock -o requirements-runtime.lock
	$(UVC) --python-version 3.11.5 requirements-tools.in -c requirements-tools.lock -o requirements-tools.lock

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .hypothesis
