"""Programs per second of the `code` reward on HumanEval's canonical solutions: a git ref vs the working tree.

    python launch/bench_code.py                       # HEAD vs working tree, all 164 tasks, 3 rounds
    python launch/bench_code.py --ref HEAD~3 --n 64 --rounds 5 --sandbox basic

The two versions run alternately in the same process (old, new, new, old, ...), so load from
other work on the machine affects both alike; the figure per version is the median over rounds.
The old version is loaded from `git show <ref>:prorl/rewards/{base,sandbox,code,_sandbox_child,_sandbox_wire}.py`
into a throw-away package. Every canonical solution must score 1 in both, or the run fails.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"
FILES = ("base.py", "sandbox.py", "code.py", "_sandbox_child.py", "_sandbox_wire.py")


def load_ref(ref: str, into: Path):
    """Import prorl/rewards/code.py as of `ref` as package `prorl_bench_<ref>`; return its make_code."""
    name = "prorl_bench_" + "".join(c if c.isalnum() else "_" for c in ref)
    package = into / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    for file in FILES:
        shown = subprocess.run(["git", "show", f"{ref}:prorl/rewards/{file}"], cwd=REPO, capture_output=True, text=True)
        if shown.returncode == 0:
            (package / file).write_text(shown.stdout)
        elif not file.startswith("_sandbox_"):  # older versions have no such files
            sys.exit(f"git show {ref}:prorl/rewards/{file} failed: {shown.stderr.strip()}")
    sys.path.insert(0, str(into))
    return importlib.import_module(f"{name}.code").make_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", default="HEAD", help="git ref of the old version (default HEAD)")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--n", type=int, default=164, help="first N tasks (default all 164)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="parallel sandboxes (default: the reward's, min(8, CPUs))")
    parser.add_argument("--sandbox", default="auto", help="new version's isolation level: auto, strict or basic")
    parser.add_argument("--no-old", action="store_true", help="time the working tree only")
    args = parser.parse_args()

    if not Path(args.data).exists():
        sys.exit(f"HumanEval data not found at {args.data}")
    with gzip.open(args.data, "rt") as f:
        rows = [json.loads(line) for line in f][: args.n]
    prompts = [r["prompt"] for r in rows]
    completions = [r["canonical_solution"] for r in rows]
    columns = {"test": [r["test"] for r in rows], "entry_point": [r["entry_point"] for r in rows]}

    sys.path.insert(0, str(REPO))
    from prorl.rewards.code import make_code as make_new
    from prorl.rewards.sandbox import check_sandbox_level

    level = check_sandbox_level(args.sandbox)
    kwargs = {"max_workers": args.workers} if args.workers else {}
    versions = {"new (working tree, %s)" % level: make_new(sandbox=args.sandbox, **kwargs)}
    with tempfile.TemporaryDirectory(prefix="prorl-bench-code-") as tmp:
        if not args.no_old:
            versions = {f"old ({args.ref})": load_ref(args.ref, Path(tmp))(**kwargs), **versions}
        names = list(versions)
        rates = {name: [] for name in names}
        for name in names:  # warm-up: first-use costs (probe, compile) are not what we measure
            versions[name](prompts[:4], completions[:4], **{k: v[:4] for k, v in columns.items()})
        for round_ in range(args.rounds):
            order = names if round_ % 2 == 0 else names[::-1]
            for name in order:
                start = time.perf_counter()
                scores = versions[name](prompts, completions, **columns)
                elapsed = time.perf_counter() - start
                failed = [r["task_id"] for r, s in zip(rows, scores) if s != 1.0]
                if failed:
                    sys.exit(f"{name}: canonical solutions scored below 1: {failed}")
                rates[name].append(len(rows) / elapsed)
                print(f"round {round_ + 1} {name}: {len(rows) / elapsed:.1f} programs/s ({elapsed:.2f} s)", flush=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\n{len(rows)} HumanEval canonical solutions, {args.rounds} rounds, {cpus} CPUs, workers={args.workers or 'default'}")
    for name in names:
        print(f"{name}: median {statistics.median(rates[name]):.1f} programs/s (rounds: {', '.join(f'{r:.1f}' for r in rates[name])})")


if __name__ == "__main__":
    main()
