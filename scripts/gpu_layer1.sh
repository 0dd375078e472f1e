#!/usr/bin/env bash
# The GPU tier's first layer (tests/gpu/test_layer1_*: no Ray, no vLLM) on a GPU machine that
# has python3 with torch, transformers, peft, pyarrow and pytest, and no registry. DeepSpeed and
# the packages it needs travel as wheels (scripts/gpu_wheels.sh builds them here).
# Usage: scripts/gpu_layer1.sh [WHEEL_DIR] [OUT_DIR]   (defaults .whl/gpu and $OUT or ./gpu-out)
# Writes OUT_DIR/layer1.json (the measured numbers), layer1.log (pytest's output), env.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
wheels=${1:-.whl/gpu}
out=${2:-${OUT:-gpu-out}}
mkdir -p "$out"
python=${PYTHON:-python3}
site=/tmp/rlhf-gpu-site
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl || exit 1
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
# DeepSpeed's CUDA ops (FusedAdam) compile on first use into this directory.
export TORCH_EXTENSIONS_DIR=/tmp/rlhf-gpu-torch-extensions
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$python" -c 'import torch, transformers, peft, deepspeed; print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "peft", peft.__version__, "deepspeed", deepspeed.__version__)'
    "$python" -c 'import importlib.util as u; print("ray", u.find_spec("ray") is not None, "vllm", u.find_spec("vllm") is not None)'
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
RLHF_GPU_RESULTS="$out/layer1.json" "$python" -m pytest tests/gpu/test_layer1_trainer.py \
    tests/gpu/test_layer1_models.py tests/actors/test_without_ray.py -p no:cacheprovider -rs \
    --durations=15 2>&1 | tee "$out/layer1.log"
exit "${PIPESTATUS[0]}"
