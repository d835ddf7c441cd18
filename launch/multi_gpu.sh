#!/usr/bin/env bash
# All GPUs of ONE machine, one process per GPU (accelerate launch). Default: data parallel with
# the repository's accelerate_config.yaml; sharded (FSDP) with ACCELERATE_CONFIG=launch/fsdp.yaml
# when the model does not fit one GPU.
#
#   launch/multi_gpu.sh --config launch/recipes/prorl.yaml --output_dir ckpt/prorl
#   ACCELERATE_CONFIG=launch/fsdp.yaml launch/multi_gpu.sh --config ... --output_dir ...
#   NUM_GPUS=4 CUDA_VISIBLE_DEVICES=0,1,2,3 launch/multi_gpu.sh ...   (a subset of the GPUs)
#   MASTER_PORT=29601 launch/multi_gpu.sh ...                          (two jobs on one machine)
#
# batch_size (prompts per optimizer step, whole job) must be divisible by the number of GPUs.
# Every argument goes to `prorl train`. Prints the exact command before running it.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="${ACCELERATE_CONFIG:-$REPO/accelerate_config.yaml}"

run() {  # print the command, shell-quoted so it can be copied, then run it in place of this shell
    printf '+' >&2; printf ' %q' "$@" >&2; printf '\n' >&2
    exec "$@"
}

if [[ -z "${NUM_GPUS:-}" ]]; then
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo "launch/multi_gpu.sh: nvidia-smi not found; set NUM_GPUS, or use launch/cpu_2proc.sh on CPUs" >&2
        exit 2
    fi
    NUM_GPUS="$(nvidia-smi -L | wc -l)"
fi
if [[ "$NUM_GPUS" -lt 2 && "$(grep -E '^distributed_type:' "$CONFIG")" == *MULTI_GPU* ]]; then
    echo "launch/multi_gpu.sh: $NUM_GPUS GPU found; use launch/gpu.sh for one GPU" >&2
    exit 2
fi
extra=()
if grep -qE '^distributed_type: *DEEPSPEED' "$CONFIG"; then
    extra=(--deepspeed_config_file "$REPO/launch/deepspeed_zero3.json")
fi

run accelerate launch --config_file "$CONFIG" --num_processes "$NUM_GPUS" \
    --main_process_port "${MASTER_PORT:-29500}" ${extra[@]+"${extra[@]}"} \
    -m prorl train "$@"
