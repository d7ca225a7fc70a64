# vpcni: `make run` (demo node on the embedded EC2 emulator) and `make test` (lint, types, tests).
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test lint typecheck pytest setup data bench clean reliability

setup:
	@scripts/bootstrap.sh

run: setup
	@$(PY) -m agent.demo

test: setup lint typecheck pytest

lint:
	$(VENV)/bin/ruff check agent datapath tests scripts bench
	$(VENV)/bin/ruff format --check agent datapath tests scripts bench

typecheck:
	$(VENV)/bin/mypy

pytest:
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The reliability suite in full (tests/reliability: >= 5,000 ops and 20 SIGKILLs per emulator,
# EC2 faults, API fuzzing); `make test` runs it reduced. Figures: docs/reliability.md.
reliability: setup
	VPCNI_RELIABILITY=full $(PY) -m pytest -q -s -p no:cacheprovider tests/reliability $(PYTEST_ARGS)

# Regenerates agent/ipam/instance_types.csv from the shared DescribeInstanceTypes snapshot.
data: setup
	$(PY) scripts/gen_instance_table.py ../shared/data/describe_instance_types.json.gz agent/ipam/instance_types.csv

bench: setup
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
