# Two commands on a fresh machine with Python 3.11 and Node.js 20: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The MLflow server tests/e2e/test_mlflow.py starts, in its own environment: mlflow requires gunicorn<27, refit pins 27.
MLFLOW_VENV := .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed
# Airflow (tests/e2e/test_airflow_dag.py) in a virtualenv of its own: its pins conflict with constraints.txt.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
AIRFLOW_PACKAGES := apache-airflow==3.3.2 apache-airflow-providers-amazon==9.39.0
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test lint format synth clean browser

install: $(STAMP) $(MLFLOW_STAMP) $(AIRFLOW_STAMP)

$(STAMP): pyproject.toml constraints.txt package.json package-lock.json
	@echo "==> creating $(VENV) and installing refit (pinned by constraints.txt)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --constraint constraints.txt --editable '.[dev,grafana,kubeflow]'
	@echo "==> installing the AWS CDK CLI (package-lock.json)"
	npm ci --no-audit --no-fund --loglevel=error
	@touch $(STAMP)

$(MLFLOW_STAMP): constraints-mlflow.txt
	@echo "==> creating $(MLFLOW_VENV) with the MLflow server the tests start (pinned by constraints-mlflow.txt)"
	rm -rf $(MLFLOW_VENV)
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install --quiet --constraint constraints-mlflow.txt mlflow==3.17.2
	@touch $(MLFLOW_STAMP)

$(AIRFLOW_STAMP): scripts/integrations/airflow-constraints.txt
	@echo "==> creating $(AIRFLOW_VENV) with Airflow and its Amazon provider (pinned by airflow-constraints.txt)"
	rm -rf $(AIRFLOW_VENV)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install --quiet --constraint scripts/integrations/airflow-constraints.txt $(AIRFLOW_PACKAGES)
	@touch $(AIRFLOW_STAMP)

# Debian's headless Chromium for tests/integration/test_reports_in_browser.py (Playwright drives this binary; it never
# downloads a browser of its own). Needs root; without it the browser tests skip, except under CI, where they fail.
browser:
	@command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || { \
	  echo "==> installing Debian's chromium-headless-shell"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium-headless-shell >/dev/null; }

demo: $(STAMP)
	$(BIN)/python -m scripts.demo

test: $(STAMP) $(MLFLOW_STAMP) $(AIRFLOW_STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -p no:logging --durations=10

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

synth: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" npx --no-install cdk synth --quiet

clean:
	rm -rf $(VENV) $(MLFLOW_VENV) $(AIRFLOW_VENV) node_modules cdk.out .pytest_cache .refit-demo .refit-local
