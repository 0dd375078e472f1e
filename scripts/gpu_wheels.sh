#!/usr/bin/env bash
# Builds the wheels that the GPU tier's first layer needs on a GPU machine that has torch,
# transformers, peft and pytest but no DeepSpeed (and no registry): DeepSpeed built here from its
# source distribution (pure Python; its CUDA ops compile there on first use) and the packages it
# needs that such a machine lacks, for Python 3.12 on x86-64 Linux.
# Usage: scripts/gpu_wheels.sh [DIR]   (default .whl/gpu, ignored by git; about 5 MB)
# Then on the GPU machine: scripts/gpu_layer1.sh DIR
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl/gpu}
pip=${PIP:-.venv/bin/pip}
mkdir -p "$dir"
"$pip" wheel --quiet --no-deps --wheel-dir "$dir" deepspeed==0.19.8
# DeepSpeed's needs that are not in such an image (pydantic and what it pulls in, hjson).
"$pip" download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest "$dir" pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection hjson
ls -la "$dir"
