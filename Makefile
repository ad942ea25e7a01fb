# Parley: `make run` runs everything on embedded real servers behind HAProxy;
# `make test` runs every gate and the whole test suite.
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install lint fmt typecheck lock bench clean

install: $(STAMP)
	@bash scripts/install.sh web

$(STAMP): pyproject.toml requirements.lock scripts/install.sh
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

# Re-pin every dependency after changing pyproject.toml.
lock: install
	$(BIN)/pip freeze --exclude-editable --disable-pip-version-check > requirements.lock

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache .hypothesis
