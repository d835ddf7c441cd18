#!/usr/bin/env bash
# One CPU process. Use it on a laptop or CPU-only box, for the quick start, debugging and CI; GPUs
# are hidden (CUDA_VISIBLE_DEVICES=) even if the machine has some.
#
#   launch/cpu.sh --config launch/recipes/quickstart.yaml
#   launch/cpu.sh --config launch/recipes/quickstart.yaml --max_steps 5 --output_dir /tmp/run
#
# Every argument goes to `prorl train`. Prints the exact command before running it.
set -euo pipefail

run() {  # print the command, shell-quoted so it can be copied, then run it in place of this shell
    printf '+' >&2; printf ' %q' "$@" >&2; printf '\n' >&2
    exec "$@"
}

run env CUDA_VISIBLE_DEVICES= prorl train "$@"
