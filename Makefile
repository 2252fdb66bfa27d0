# The two commands a fresh clone needs (see README.md):
#   make quickstart   install, then run examples/quickstart.yaml locally
#   make test         install, build the test control plane (cached), lint, run every test tier
# Everything installs from pinned files (constraints.txt, hack/k8s-build/go.sum); nothing by hand.
PY := .venv/bin/python

.PHONY: setup k8s quickstart lint test crd lock
setup:
	./hack/setup.sh

k8s:
	./hack/build-k8s.sh

quickstart: setup
	.venv/bin/edgetune run examples/quickstart.yaml

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: setup k8s lint
	$(PY) -m pytest

crd: setup
	.venv/bin/edgetune crd -o crds/finetunejobs.edgetune.dev.yaml

lock:
	./hack/lock.sh
