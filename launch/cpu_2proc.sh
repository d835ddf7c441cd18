#!/usr/bin/env bash
# Two CPU processes on one machine (torchrun; gloo process group). Mainly for testing the
# distributed code paths without GPUs: a 2-process run samples the same completions as a
# 1-process run with the same seed and batch_size (batch_size must be even). Not faster.
#
#   launch/cpu_2proc.sh --config launch/recipes/quickstart.yaml --output_dir /tmp/run2
#   NPROC=4 launch/cpu_2proc.sh ...        (more processes; batch_size divisible by NPROC)
#   MASTER_PORT=29601 launch/cpu_2proc.sh  (when another run uses 29500)
#
# Every argument goes to `prorl train`. Prints the exact command before running it.
# One intra-op thread per process by default (OMP_NUM_THREADS), so the processes don't fight.
set -euo pipefail

run() {  # print the command, shell-quoted so it can be copied, then run it in place of this shell
    printf '+' >&2; printf ' %q' "$@" >&2; printf '\n' >&2
    exec "$@"
}

run env CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" \
    "${PYTHON:-python}" -m torch.distributed.run --nproc_per_node "${NPROC:-2}" \
    --master_addr 127.0.0.1 --master_port "${MASTER_PORT:-29500}" \
    -m prorl train "$@"
