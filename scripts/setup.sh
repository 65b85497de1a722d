#!/usr/bin/env bash
# One-shot set-up of a fresh machine: the project virtualenv at .venv/ with nfopt
# (editable) and its dev/bench/search extras, versions pinned by constraints.txt.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real offline data (Fashion-MNIST IDX files) from Debian, where we can install it.
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 \
    && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "nfopt set-up: installing Debian's dataset-fashion-mnist (offline Fashion-MNIST) ..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
    >/dev/null 2>&1 || echo "note: could not install Debian's dataset-fashion-mnist; Fashion-MNIST tests will skip" >&2
fi

PY=${PYTHON:-python3}
echo "nfopt set-up: virtualenv .venv/ ..."
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "nfopt set-up: installing nfopt and its pinned dependencies (torch, ray, mlflow; about 2-3 minutes on a fresh machine) ..."
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,bench,search]' \
  2> >(grep -v "^WARNING: Location 'file://" >&2)
echo "nfopt set-up done: .venv/ ($(.venv/bin/python -c 'import torch, ray, mlflow; print(f"torch {torch.__version__}, ray {ray.__version__}, mlflow {mlflow.__version__}")'))"
