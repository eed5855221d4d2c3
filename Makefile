# Two commands set up a fresh machine: `make demo` and `make test`.
# Both create .venv (Python 3.11) and install the project with its extras when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean flink-env

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[gpu,train,dev,stats]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# The two environments install side by side (each pip keeps about one core busy); then the
# tests run on every core, a whole file to a worker, so that a file's module fixtures train
# once and its tests keep their order; tests/conftest.py puts the slowest files first.
TEST_WORKERS ?= auto
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target $(STAMP) flink-env
	$(BIN)/ruff check runtime trainer integrations
	$(BIN)/mypy runtime
	$(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile \
	    --no-loadscope-reorder

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build $(FLINK)

# The Flink integration's own environment (PyFlink pins numpy/Beam apart from TensorFlow):
# PyFlink, CPU ONNX Runtime and click, with the repository on its path. Where it cannot be
# installed (no network), .venv-flink/.unavailable says why and the Flink tests skip.
FLINK       := .venv-flink
FLINK_STAMP := $(FLINK)/.installed
KAFKA_JARS  := $(FLINK)/kafka-jars

flink-env: $(FLINK_STAMP) $(KAFKA_JARS)/.installed

# The thin Kafka connector jars for the Kafka test (integrations/flink/jars.py says whence).
$(KAFKA_JARS)/.installed: $(FLINK_STAMP) integrations/flink/jars.py
	@rm -f $(KAFKA_JARS)/.unavailable
	@test ! -f $(FLINK)/.unavailable \
	  && $(FLINK)/bin/python -m integrations.flink.jars $(KAFKA_JARS) >/dev/null && touch $@ \
	  || { mkdir -p $(KAFKA_JARS); echo "pip could not fetch the Kafka connector jars; run make flink-env to see why" > $(KAFKA_JARS)/.unavailable; \
	       echo "WARNING: no Kafka connector jars; the Flink Kafka test will skip" >&2; }

$(FLINK_STAMP): integrations/flink/requirements.txt
	@rm -f $(FLINK)/.unavailable
	@( test -x $(FLINK)/bin/python || $(PYTHON) -m venv $(FLINK) ) \
	  && $(FLINK)/bin/python -m pip install -q -r integrations/flink/requirements.txt \
	  && echo "$(CURDIR)" > "$$($(FLINK)/bin/python -c 'import site; print(site.getsitepackages()[0])')/lstm_edge.pth" \
	  && touch $@ \
	  || { mkdir -p $(FLINK); echo "pip could not install PyFlink into $(FLINK); run make flink-env to see why" > $(FLINK)/.unavailable; \
	       echo "WARNING: PyFlink not installed; the Flink tests will skip" >&2; }
