#!/usr/bin/env bash
# One GPU, one process. Use it when the model, its gradients, Adam state and the KL reference fit
# on one GPU (e.g. up to ~1.5B parameters in bfloat16 on 80 GB, depending on lengths), and to
# debug before going multi-GPU.
#
#   launch/gpu.sh --config launch/recipes/prorl.yaml --output_dir ckpt/prorl-1gpu
#   CUDA_VISIBLE_DEVICES=3 launch/gpu.sh ...     (pick the GPU; default: GPU 0)
#
# Every argument goes to `prorl train`. Prints the exact command before running it.
set -euo pipefail

run() {  # print the command, shell-quoted so it can be copied, then run it in place of this shell
    printf '+' >&2; printf ' %q' "$@" >&2; printf '\n' >&2
    exec "$@"
}

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "launch/gpu.sh: nvidia-smi not found; no NVIDIA GPU here? (launch/cpu.sh runs on CPU)" >&2
fi
run env CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" prorl train "$@"
