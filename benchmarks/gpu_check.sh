#!/usr/bin/env bash
# The GPU check (issue 17), prepared for a machine lent for a few minutes: it installs nothing and fetches nothing,
# prints the environment, runs the GPU tests and the GPU benchmark, each under its own timeout (8 minutes in all),
# and leaves every result in one folder.
#
#   bash benchmarks/gpu_check.sh [FOLDER]        # FOLDER: default $OUT, else runs/gpu-check
#
# Needs: Python with a CUDA build of torch, torchmetrics, tensorboard, lightning-utilities (and lightning, for the
# benchmark's Lightning variant), and pytest. Where pytest is not installed, its pure-Python packages are taken from
# a checkout's .venv (.venv/lib/python3.*/site-packages/{_pytest,pytest,pluggy,iniconfig,packaging}), copied alone
# into the folder so that nothing else of that environment (its CPU torch) is imported.
#
# The folder gets: environment.txt, pytest-gpu.log and pytest-gpu.xml, pytest-two-gpus.log and fsdp-memory.log/.json
# (with 2+ GPUs: one more minute),
# benchmark.log, gpu-benchmark.json, gpu-benchmark.md (gpu-benchmark.samples.json after every round, if cut short),
# and summary.txt: each part's exit status and seconds. The script's own status is 0 when every part succeeded.

set -u -o pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-runs/gpu-check}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package from this checkout, not installed
export PYTHONDONTWRITEBYTECODE=1
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
STATUS=0

# part NAME SECONDS LOG COMMAND...: run COMMAND with its output in LOG, interrupted (SIGINT, so pytest still writes
# its report) after SECONDS and killed 15 s later; record its status and duration.
part() {
    local name="$1" limit="$2" log="$3"
    shift 3
    local started=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$log" 2>&1
    local code=$?
    echo "$name: exit $code after $((SECONDS - started)) s (limit $limit s)" | tee -a "$SUMMARY"
    [ "$code" -eq 0 ] || STATUS=1
}

# 1. environment (30 s): the machine, the versions, and whether the package imports on this torch
part environment 30 "$OUT_DIR/environment.txt" bash -c '
    date; uname -a; nvidia-smi || true
    "$0" - <<"EOF"
import importlib, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
for index in range(torch.cuda.device_count()):
    print(f"  cuda:{index}", torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index))
for name in ("torchmetrics", "tensorboard", "lightning_utilities", "lightning", "pytest", "numpy"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except ImportError as error:
        print(name, "MISSING", error)
import torchsystem_trainer
print("torchsystem_trainer imports from", torchsystem_trainer.__file__)
EOF' "$PYTHON"

# pytest itself: installed, or its pure-Python packages from a checkout's .venv
if ! "$PYTHON" -c "import pytest" 2>/dev/null; then
    SITE="$(ls -d .venv/lib/python3*/site-packages 2>/dev/null | head -n 1)"
    if [ -n "$SITE" ] && [ -d "$SITE/_pytest" ]; then
        mkdir -p "$OUT_DIR/.pytest-only"
        for package in _pytest pytest pluggy iniconfig packaging py.py; do
            [ -e "$SITE/$package" ] && cp -r "$SITE/$package" "$OUT_DIR/.pytest-only/"
        done
        export PYTHONPATH="$PYTHONPATH:$OUT_DIR/.pytest-only"
        echo "pytest: taken from $SITE" | tee -a "$SUMMARY"
    else
        echo "pytest: MISSING (install it, or carry .venv/lib/python3.*/site-packages/{_pytest,pytest,pluggy,iniconfig,packaging})" | tee -a "$SUMMARY"
    fi
fi

# 2. the GPU tests (240 s): tests/gpu, every one marked gpu
part pytest-gpu 240 "$OUT_DIR/pytest-gpu.log" \
    "$PYTHON" -m pytest -m gpu tests/gpu -p no:cacheprovider -v -rA --durations=15 --junitxml="$OUT_DIR/pytest-gpu.xml"

# 3. with two GPUs or more, the existing torchrun test of DDP on NCCL across two processes (60 s), and the memory
# per process of FSDP against DDP on the GPUs (60 s); FSDP on NCCL at bf16-mixed is in the GPU tests (part 2)
GPUS="$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)"
if [ "${GPUS:-0}" -ge 2 ]; then
    part pytest-two-gpus 60 "$OUT_DIR/pytest-two-gpus.log" "$PYTHON" -m pytest -p no:cacheprovider -v -rA \
        "tests/strategies/test_ddp_processes.py::test_torchrun_nccl_bf16_mixed_on_two_gpus"
    part fsdp-memory 60 "$OUT_DIR/fsdp-memory.log" "$PYTHON" -m benchmarks.fsdp_memory --accelerator cuda \
        --devices "$GPUS" --out "$OUT_DIR/fsdp-memory.json"
fi

# 4. the benchmark (150 s): raw loop vs Trainer vs Lightning, ResNet-18 and GPT, 5 interleaved rounds
# shellcheck disable=SC2086  # BENCH_ARGS: extra arguments, word-split on purpose (a dry run: --device cpu --quick)
part benchmark 150 "$OUT_DIR/benchmark.log" "$PYTHON" -m benchmarks.gpu --out "$OUT_DIR" ${BENCH_ARGS:-}

echo "total: $SECONDS s; results in $OUT_DIR" | tee -a "$SUMMARY"
exit "$STATUS"
