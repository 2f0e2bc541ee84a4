# The README's two commands: `make demo` and `make test`. Both set up first
# (scripts/setup.sh is idempotent and takes seconds once installed).
.PHONY: setup demo test test-fast hdfs-start hdfs-stop

setup:
	./scripts/setup.sh

demo: setup
	./scripts/demo.sh

test: setup
	.venv/bin/python -m pytest

# Without the slow end-to-end tests.
test-fast: setup
	.venv/bin/python -m pytest -m "not slow"

hdfs-start: setup
	./scripts/hdfs.sh start

hdfs-stop:
	./scripts/hdfs.sh stop
