"""Score the reward-hack suite's completions (tests/test_reward_hacks.py) with the `code` reward's
HumanEval harness as of a git ref: how many hacks that ref let through.

    python launch/hacks_at_ref.py --ref 2c72ca8      # the harness before the two-process grader

The ref's prorl/rewards files are loaded into a throw-away package (as `bench_code.py` does).
Needs ../shared/data/humaneval/HumanEval.jsonl.gz.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "launch")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="HEAD", help="git ref of the harness to score with (default HEAD)")
    args = parser.parse_args()
    import bench_code
    from tests import test_reward_hacks as suite

    bench_code.load_ref(args.ref, Path(tempfile.mkdtemp()))
    code = importlib.import_module("prorl_bench_" + "".join(c if c.isalnum() else "_" for c in args.ref) + ".code")
    passed = []
    for name in sorted(suite.HACKS):
        task, completion, _ = suite.HACKS[name]
        row = suite.rows()[task]
        score = code.run_humaneval(row["prompt"], completion, row["test"], row["entry_point"], timeout_s=10)
        print(f"{name}: {score}", flush=True)
        passed += [name] if score > 0 else []
    print(f"{len(passed)} of {len(suite.HACKS)} hacks scored > 0 with the harness of {args.ref}: {', '.join(passed)}")


if __name__ == "__main__":
    main()
