"""`prorl plot OUTPUT_DIR`: PNG charts of a run's metrics.jsonl (needs the `plot` extra: matplotlib).

One PNG per metric family, with reference resets marked as vertical lines; a mixed run (`datasets`)
also gets one PNG per per-domain metric, a line per domain.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import ConfigError

PANELS = {
    "reward": ["reward_mean"],
    "kl": ["kl"],
    "entropy": ["entropy"],
    "completion_length": ["completion_len_mean", "completion_len_max"],
    "clip_fraction": ["clip_frac"],
    "skipped_groups": ["skipped_groups"],
}


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} not found: give the output_dir of a prorl run")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return rows


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install 'prorl[plot]'") from None
    rows = read_metrics(Path(run_dir))
    out = Path(out_dir or Path(run_dir) / "plots")
    out.mkdir(parents=True, exist_ok=True)
    resets = [r["step"] for r in rows if r.get("ref_reset")]
    panels = dict(PANELS)
    eval_keys = sorted({k for r in rows for k in r if k.startswith("eval/pass@")})
    if eval_keys:
        panels["heldout_pass_at_k"] = eval_keys
    # a mixed run: one panel per metric with a line per domain (where each improves, where it saturates)
    keys = sorted({k for r in rows for k in r})
    for metric in ("reward_mean", "zero_signal_frac", "completion_len_mean"):
        lines = [k for k in keys if k.startswith("domain/") and k.endswith("/" + metric)]
        if lines:
            panels[f"domain_{metric}"] = lines
    heldout = [k for k in keys if k.startswith("eval/domain/") and "/pass@" in k]
    if heldout:
        panels["domain_heldout_pass_at_k"] = heldout
    written = []
    for name, keys in panels.items():
        fig, ax = plt.subplots(figsize=(7, 3.5))
        drawn = False
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, label=key)
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        for i, step in enumerate(resets):
            ax.axvline(step, color="grey", linestyle="--", linewidth=0.8, label="reference reset" if i == 0 else None)
        ax.set_xlabel("step")
        ax.set_title(name.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
