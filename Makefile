# vpcni: `make run` (demo node on the embedded EC2 emulator) and `make test` (lint, types, tests).
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test lint typecheck pytest setup data bench clean plugin golint gotest image reliability

# The CNI plugin (plugin/, Go standard library only): a static binary, built offline by Debian's
# go. Caches live under build/ so root CI and parallel worktrees need no $HOME and no network.
GO := go
GOENV := GOCACHE=$(CURDIR)/build/gocache GOPATH=$(CURDIR)/build/gopath GOFLAGS= GOPROXY=off \
	GO111MODULE=on GOTOOLCHAIN=local CGO_ENABLED=0
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

setup:
	@scripts/bootstrap.sh

run: setup plugin
	@$(PY) -m agent.demo

test: setup lint typecheck gotest plugin pytest

plugin: build/vpcni

build/vpcni: $(wildcard plugin/*.go) plugin/go.mod pyproject.toml
	cd plugin && $(GOENV) $(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o ../build/vpcni .

golint:
	@out=$$(gofmt -l plugin); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	cd plugin && $(GOENV) $(GO) vet ./...

gotest:
	cd plugin && $(GOENV) $(GO) test -count=1 ./...

lint: golint
	$(VENV)/bin/ruff check agent datapath tests scripts bench
	$(VENV)/bin/ruff format --check agent datapath tests scripts bench

typecheck:
	$(VENV)/bin/mypy

pytest: plugin
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The reliability suite in full (tests/reliability: >= 5,000 ops and 20 SIGKILLs per emulator,
# EC2 faults, API fuzzing); `make test` runs it reduced. Figures: docs/reliability.md.
reliability: setup plugin
	VPCNI_RELIABILITY=full $(PY) -m pytest -q -s -p no:cacheprovider tests/reliability $(PYTEST_ARGS)

# The node image from Dockerfile, built here offline (root; Debian's debootstrap + buildah):
# build/vpcni-image.tar for `ctr images import` / `docker load`. As root, tests/test_image.py
# builds it too (cached), so `make test` and CI run it. With a registry: docker build .
image:
	scripts/image.sh

# Regenerates agent/ipam/instance_types.csv from the VPC CNI limits and DescribeInstanceTypes
# snapshots in ../shared/data.
data: setup
	$(PY) scripts/gen_instance_table.py ../shared/data/describe_instance_types.json.gz ../shared/data/vpc_ip_resource_limits.csv agent/ipam/instance_types.csv

bench: setup plugin
	$(PY) -m bench.run $(if $(filter-out 0,$(QUICK)),--quick)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build
