# Two entry points for a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The brokers the integration and fault suites run on (`make test BROKERS=tansu` skips the JVM).
BROKERS ?= tansu apache
KAFKA_VERSION := $(shell sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' deploy/kafka/pom.xml)
KAFKA_JAR := deploy/kafka/lib/kafka_2.13-$(KAFKA_VERSION).jar

.PHONY: demo test bench faults clean kafka-jars

$(BIN)/recal: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/recal
	$(BIN)/recal demo

# The Apache Kafka broker's jars (deploy/kafka/pom.xml), fetched once into deploy/kafka/lib (git-ignored).
$(KAFKA_JAR): deploy/kafka/pom.xml
	rm -rf deploy/kafka/lib
	mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies
	touch $@

kafka-jars: $(KAFKA_JAR)

# Unit, deployment and serving tests once (they use no broker), the JVM and Go ranker clients against the
# shared vectors and a real Redis (clients/ci.sh); the integration and fault suites once per broker, timed.
test: $(BIN)/recal $(if $(filter apache,$(BROKERS)),$(KAFKA_JAR))
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q tests/unit tests/deploy tests/serving recalibrators streams
	bash clients/ci.sh
	status=0; for broker in $(BROKERS); do \
	  start=$$(date +%s); \
	  RECAL_TEST_BROKER=$$broker $(BIN)/pytest -q tests/integration tests/faults || status=1; \
	  echo "integration + fault suites on $$broker: $$(( $$(date +%s) - start )) s"; \
	done; exit $$status

bench: $(BIN)/recal
	status=0; for f in bench/bench_*.py; do $(BIN)/python $$f || status=1; done; exit $$status

# The fault-injection suite at full length (Redis down 30 s, broker frozen 15 s) with its summary table;
# add --soak 600 for the 10-minute soak.
faults: $(BIN)/recal
	$(BIN)/python bench/fault_suite.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info deploy/kafka/lib
