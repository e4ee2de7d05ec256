#!/usr/bin/env bash
# The GPU paths run for real, one after the other, on one GPU machine; what they print goes to $OUT
# (default: a temporary folder) and results/gpu.md is written from it by `python -m scripts.gpu_report DIR`.
#   1. digits end to end with the shipped defaults at 100 epochs: the CPU, the plain loop on the GPU, and
#      Ray Train with one GPU worker (its process group is NCCL): mAP, images/s and the cost/* metrics;
#   2. ViT-B/16 at 224 px: fp32 vs bf16 autocast, plain loop vs Ray Train (benchmarks/gpu_throughput.py).
# Where the machine lacks Ray, its dashboard's needs (Train V2 needs the dashboard) and a few more, they come as
# wheels in .whl/ (see results/gpu.md).
set -u
OUT=${OUT:-$(mktemp -d)}
EPOCHS=${EPOCHS:-100}
STEPS=${STEPS:-"cpu gpu ray_gpu vit"}  # a subset reruns only those
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    for archive in .whl/*.tar.xz; do tar -xJf "$archive" -C /tmp/site || exit 1; done
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export RAY_TMPDIR=/tmp/r PYTHONUNBUFFERED=1 && mkdir -p "$RAY_TMPDIR"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import sys, torch, timm, ray; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'ray', ray.__version__)"
    nproc
    python3 -c "import ray.dashboard.optional_deps" && echo "ray dashboard: its needs import"
} > "$OUT/machine.txt" 2>&1
run_digits() {  # name, then the train CLI's arguments
    local name=$1 && shift
    echo "== digits $name: $*"
    python3 -m hashtune.train --out "/tmp/digits-$name" --no-progress "$@" "train.epochs=$EPOCHS" && cp "/tmp/digits-$name/metrics.json" "$OUT/digits_$name.json"
}
{
    [[ " $STEPS " == *" cpu "* ]] && run_digits cpu train.device=cpu
    [[ " $STEPS " == *" gpu "* ]] && run_digits gpu train.device=cuda
    [[ " $STEPS " == *" ray_gpu "* ]] && run_digits ray_gpu --workers 1 --gpus-per-worker 1 --cpus-per-worker 1 train.device=cuda
    [[ " $STEPS " == *" vit "* ]] && echo "== ViT-B/16 throughput" && python3 -m benchmarks.gpu_throughput --ray-cpus 1 8 --out "$OUT/gpu_throughput.md"
} > "$OUT/log.txt" 2>&1
echo "gpu_check: done, files in $OUT"
