#!/usr/bin/env bash
# Fill .whl/ (git-ignored: add `/.whl/` to .git/info/exclude) with what bench/gpu_check.sh needs
# on a GPU machine whose image has a CUDA PyTorch, Python 3.12 and no package index: pydantic and
# Ray's needs as cp312 wheels, and Ray itself unpacked without its Java, RLlib, Data, Serve, LLM,
# Train, Tune and dashboard front-end (the wheel is 79 MB; this archive ~28 MB: the benchmark uses
# Ray core only). Versions are this project's venv's. Run here, where pip reaches an index.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl)
ver() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .whl
for p in annotated-types jsonschema jsonschema-specifications pydantic pydantic_core referencing rpds-py \
  typing-inspection typing_extensions; do
  "${PIP[@]}" "$p==$(ver "$p")"
done
tmp=$(mktemp -d)
"${PIP[@]/.whl/$tmp}" "ray==$(ver ray)"
(cd "$tmp" && unzip -q ray-*.whl && rm ray-*.whl \
  && rm -rf ray/jars ray/rllib ray/data ray/serve ray/llm ray/train ray/tune ray/dashboard/client \
  && find . -name '*.map' -delete && tar cf - ray ray-*.dist-info | xz -T0 -6 >"$OLDPWD/.whl/ray.tar.xz")
rm -rf "$tmp"
du -sh .whl
