# The README's two commands: `make demo` and `make test`. Both set up first
# (scripts/setup.sh is idempotent and takes seconds once installed).
.PHONY: setup demo test test-cluster test-fast lint format hdfs-start hdfs-stop

setup:
	./scripts/setup.sh

demo: setup
	./scripts/demo.sh

test: setup
	.venv/bin/python -m pytest

# Only the packed-environment chains on a local YARN and Spark standalone
# cluster (make test runs them too; they pack and upload a ~3.2 GB environment, 5.4 GB unpacked).
test-cluster: setup
	.venv/bin/python -m pytest -m cluster

# ruff lint, ruff format check and mypy, as CI runs them (settings in
# pyproject.toml); any finding fails.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

# Rewrite the tree in the project's format.
format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

# Without the slow end-to-end tests.
test-fast: setup
	.venv/bin/python -m pytest -m "not slow"

hdfs-start: setup
	./scripts/hdfs.sh start

hdfs-stop:
	./scripts/hdfs.sh stop
