"""What `puffctl ablate report` leaves out for the off-policy ablations: per variant, the IQM
of env steps to the target (a seed that never reached it counts at its last step, a lower
bound), the peak value loss, and the replay instrumentation, each against the baseline.

    python bench/offpolicy_peaks.py ablations/offpolicy [--target 475] [--metric episode_return]
        [--out FILE]

Reads the batch's cells.json and every cell's events.jsonl; prints a table and writes JSON
(bench/results/<batch>_peaks.json unless --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
REPLAY = ("replay_offpolicy_frac", "replay_ratio_max", "replay_rho_clipfrac", "replay_value_loss_onpolicy",
          "replay_value_loss_retained", "replay_age_mean")


def run_summary(events_path: Path, metric: str, target: float) -> dict | None:
    """One run: steps to target (or None), last step, peak value loss and peak grad norm, and the
    means over its progress events of the replay instrumentation."""
    if not events_path.is_file():
        return None
    progress = [e for e in map(json.loads, events_path.read_text().splitlines()) if e.get("type") == "progress"]
    if not progress:
        return None
    reached = next((e["agent_steps"] for e in progress if (e.get("env") or {}).get(metric, float("-inf")) >= target),
                   None)
    losses = [e["losses"] for e in progress]
    summary = {"steps_to_target": reached, "last_step": progress[-1]["agent_steps"],
               "peak_value_loss": max(l["value_loss"] for l in losses),
               "peak_grad_norm": max(l.get("grad_norm", float("nan")) for l in losses),
               "sps": statistics.fmean(e["sps"] for e in progress if e.get("sps"))}
    for key in REPLAY:
        values = [l[key] for l in losses if isinstance(l.get(key), (int, float)) and l[key] == l[key]]
        summary[key] = (max(values) if key == "replay_ratio_max" else statistics.fmean(values)) if values else None
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("batch", type=Path, help="the ablation's directory (ablations/<name>)")
    parser.add_argument("--target", type=float, default=475.0)
    parser.add_argument("--metric", default="episode_return", help="the env key the target applies to")
    parser.add_argument("--baseline", default="baseline", help="the variant the others are compared to")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cells = json.loads((args.batch / "cells.json").read_text())["cells"]
    groups: dict[str, list[dict]] = {}
    for cell in cells:
        summary = run_summary(args.batch / "runs" / cell["id"] / "events.jsonl", args.metric, args.target)
        if summary is not None:
            groups.setdefault(cell["group"], []).append({"seed": cell["seed"], **summary})

    def iqm(values: list[float]) -> float:
        return float(stats.trim_mean(values, 0.25))

    rows = {}
    for group, runs in groups.items():
        steps = [r["steps_to_target"] if r["steps_to_target"] is not None else r["last_step"] for r in runs]
        rows[group] = {"runs": runs, "seeds": len(runs),
                       "reached": sum(r["steps_to_target"] is not None for r in runs),
                       "iqm_steps_to_target": iqm(steps),
                       "median_peak_value_loss": statistics.median(r["peak_value_loss"] for r in runs),
                       "median_peak_grad_norm": statistics.median(r["peak_grad_norm"] for r in runs),
                       "sps": statistics.fmean(r["sps"] for r in runs),
                       **{key: statistics.fmean(v) if (v := [r[key] for r in runs if r[key] is not None]) else None
                          for key in REPLAY}}
    base = rows.get(args.baseline)
    table = Table(title=f"{args.batch.name}: steps to {args.metric} >= {args.target:g} and value-loss peaks "
                        f"(vs {args.baseline})")
    for column in ("variant", "reached", "IQM steps", "x base", "peak v-loss", "x base", "peak grad", "SPS",
                   "offpol frac", "ratio max", "rho clip", "v-loss on", "v-loss ret", "age"):
        table.add_column(column, justify="right")

    def cell(value: float | None, fmt: str = "{:.3g}") -> str:
        return "-" if value is None else fmt.format(value)

    for group, row in rows.items():
        if base:
            row["steps_vs_baseline"] = row["iqm_steps_to_target"] / base["iqm_steps_to_target"]
            row["peak_value_loss_vs_baseline"] = row["median_peak_value_loss"] / base["median_peak_value_loss"]
        table.add_row(group, f"{row['reached']}/{row['seeds']}", f"{row['iqm_steps_to_target']:,.0f}",
                      cell(row.get("steps_vs_baseline"), "{:.2f}"), cell(row["median_peak_value_loss"]),
                      cell(row.get("peak_value_loss_vs_baseline"), "{:.2f}"), cell(row["median_peak_grad_norm"]),
                      f"{row['sps']:,.0f}", *(cell(row[key]) for key in REPLAY))
    Console(width=200).print(table)
    out = args.out or ROOT / "bench" / "results" / f"{args.batch.name}_peaks.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
