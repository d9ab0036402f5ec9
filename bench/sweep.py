"""Benchmark the sweep tuner's methods on synthetic objectives with known optima (DOMAIN.md §7).

Each objective mixes the spaces researchers use (log, logit, pow2, int, linear) over 2, 6 or
12 keys: score = 100 * exp(-sum_i w_i (z_i - z*_i)^2) in the [-1, 1]-normalised space, the
optimum z* a reachable point (rounded like its key), optionally with Gaussian noise on what the
tuner sees. Cost grows with two "expensive" keys (a pow2 batch and an int epoch count), as
env steps do. Every method gets the same trial budget; we record the best true score found and
the number of trials (and the cost spent) until a trial's true score is within 5% of the
optimum. Then the tuner's own time per trial (ask + tell, SQLite storage) at 200 finished trials.

    python bench/sweep.py [--objectives 6n,2,...] [--repeats 10] [--methods random,default,cost-aware]
                          [--overhead-at 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puffctl.sweep import spaces  # noqa: E402
from puffctl.sweep.tuner import Tuner, sqlite_url  # noqa: E402

TEMPLATES = (
    {"space": "pow2", "min": 64, "max": 8192},
    {"space": "int", "min": 1, "max": 16},
    {"space": "log", "min": 1e-5, "max": 1e-1},
    {"space": "logit", "min": 0.8, "max": 0.9999},
    {"space": "linear", "min": 0.0, "max": 1.0},
    {"space": "log", "min": 1e-4, "max": 10.0},
)
BUDGETS = {2: 40, 6: 150, 12: 200}
#: Sharpness per key count: uniform random sampling lands within 5% with p about 0.05 (2 keys)
#: and 1/60 (6 keys); at 12 keys it practically never does.
WEIGHTS = {2: 0.8, 6: 0.06, 12: 0.06}
NOISE = 1.0
WITHIN = 0.95


class Objective:
    """A synthetic objective: spaces, a known optimum, true and observed scores, and a cost."""

    def __init__(self, keys: int, noisy: bool, seed: int = 7) -> None:
        rng = np.random.default_rng(seed + keys)
        self.name = f"{keys} keys{' noisy' if noisy else ''}"
        self.noisy = noisy
        self.spaces = {f"k{i}": spaces.parse(f"k{i}", TEMPLATES[i % len(TEMPLATES)]) for i in range(keys)}
        self.optimum = {key: space.snap(rng.choice([-1, 1]) * rng.uniform(0.3, 0.7)) for key, space in self.spaces.items()}
        self.weights = {key: WEIGHTS[keys] * rng.uniform(0.5, 1.5) for key in self.spaces}
        self.budget = BUDGETS[keys]

    def true(self, params: dict) -> float:
        """The noise-free score of decoded `params` (100 at the optimum)."""
        distance = sum(w * (self.spaces[k].normalize(params[k]) - self.optimum[k]) ** 2 for k, w in self.weights.items())
        return 100.0 * math.exp(-distance)

    def cost(self, params: dict) -> float:
        """Grows with the pow2 batch (k0) and the int epochs (k1), like env steps; 1 to about 30."""
        z0, z1 = (self.spaces[k].normalize(params[k]) for k in ("k0", "k1"))
        return 2.0 ** (1.5 * (z0 + 1.0)) * (1.0 + (z1 + 1.0))

    def observe(self, params: dict, rng: np.random.Generator) -> float:
        """The score the tuner sees."""
        return self.true(params) + (rng.normal(0.0, NOISE) if self.noisy else 0.0)


def run_once(objective: Objective, method: str, seed: int) -> dict:
    """One sweep of `objective`'s budget: best true score, trials and cost to within 5%."""
    tuner = Tuner(objective.spaces, storage=None, name="bench", method=method, direction="maximize",
                  budget=objective.budget, seed=seed)
    rng = np.random.default_rng(1000 + seed)
    best, spent, reached, reached_cost = 0.0, 0.0, None, None
    started = time.perf_counter()
    for count in range(1, objective.budget + 1):
        trial = tuner.ask()
        true, cost = objective.true(trial.params), objective.cost(trial.params)
        tuner.tell(trial.number, objective.observe(trial.params, rng), cost)
        best, spent = max(best, true), spent + cost
        if reached is None and true >= WITHIN * 100.0:
            reached, reached_cost = count, spent
    return {"best": best, "trials_to_5pct": reached, "cost_to_5pct": reached_cost,
            "seconds": time.perf_counter() - started}


def censored_median(values: list, cap: float) -> float:
    """Median where a repeat that never got there counts as past the budget (cap)."""
    return statistics.median(cap if value is None else value for value in values)


def overhead(method: str, finished: int, keys: int = 6, probes: int = 5) -> dict:
    """Median wall and CPU seconds per ask + tell with `finished` completed (random) trials in a
    SQLite study (CPU time is what a quiet machine's wall time would be: the fit runs on one thread)."""
    import optuna
    from optuna.distributions import FloatDistribution

    objective = Objective(keys, noisy=True)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        tuner = Tuner(objective.spaces, storage=sqlite_url(Path(directory) / "study.db"), name="o", method=method,
                      direction="maximize", budget=finished + probes + 1)
        for _ in range(finished):
            x = {key: float(rng.uniform(-1, 1)) for key in objective.spaces}
            params = {key: space.decode(x[key]) for key, space in objective.spaces.items()}
            tuner.study.add_trial(optuna.trial.create_trial(
                params=x, distributions={key: FloatDistribution(-1.0, 1.0) for key in x},
                value=objective.observe(params, rng), user_attrs={"values": params, "cost": objective.cost(params)}))
        wall, cpu = [], []
        for probe in range(probes + 1):
            start, start_cpu = time.perf_counter(), time.process_time()
            trial = tuner.ask()
            tuner.tell(trial.number, objective.observe(trial.params, rng), objective.cost(trial.params))
            if probe:  # the first pays imports and a cold model fit, not a per-trial cost
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objectives", default="2,2n,6,6n,12,12n", help="comma list: key count, n = noisy ('' for the overhead probe alone)")
    parser.add_argument("--methods", default="random,default,cost-aware")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--overhead-at", type=int, default=200, help="finished trials for the overhead probe (0: skip)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "sweep.json")
    args = parser.parse_args()
    console = Console()
    methods = args.methods.split(",")
    results: dict = {"host": platform.node(), "repeats": args.repeats, "objectives": {}, "overhead": {}}
    table = Table(title=f"sweep tuner: {args.repeats} repeats per method, equal budgets (median; '>' = not reached)")
    for column in ("objective", "budget", "method", "best/optimum", "trials to 5%", "cost to 5%", "reached", "s/trial"):
        table.add_column(column, justify="left" if column in ("objective", "method") else "right")
    for name in filter(None, args.objectives.split(",")):
        objective = Objective(int(name.rstrip("n")), noisy=name.endswith("n"))
        results["objectives"][objective.name] = {}
        for method in methods:
            runs = []
            for repeat in range(args.repeats):
                runs.append(run_once(objective, method, seed=repeat))
                console.print(f"  {objective.name} {method} repeat {repeat + 1}/{args.repeats}: "
                              f"best {runs[-1]['best']:.1f}, 5% at {runs[-1]['trials_to_5pct']}", highlight=False)
            trials = censored_median([r["trials_to_5pct"] for r in runs], objective.budget + 1)
            costs = [r["cost_to_5pct"] for r in runs]
            cost = censored_median(costs, math.inf)
            reached = sum(r["trials_to_5pct"] is not None for r in runs)
            per_trial = sum(r["seconds"] for r in runs) / (len(runs) * objective.budget)
            results["objectives"][objective.name][method] = {"budget": objective.budget, "runs": runs, "median_trials_to_5pct": trials,
                                                             "median_cost_to_5pct": cost, "reached": reached}
            table.add_row(objective.name, str(objective.budget), method,
                          f"{statistics.median(r['best'] for r in runs) / 100:.3f}",
                          f">{objective.budget}" if trials > objective.budget else f"{trials:g}",
                          "-" if math.isinf(cost) else f"{cost:,.0f}", f"{reached}/{len(runs)}", f"{per_trial:.2f}")
    if results["objectives"]:
        console.print(table)
    if args.overhead_at:
        over = Table(title=f"tuner time per trial (ask + tell, SQLite) at {args.overhead_at} finished trials, 6 keys")
        over.add_column("method")
        over.add_column("wall s", justify="right")
        over.add_column("CPU s", justify="right")
        for method in methods:
            seconds = results["overhead"][method] = overhead(method, args.overhead_at)
            over.add_row(method, f"{seconds['wall']:.3f}", f"{seconds['cpu']:.3f}")
        console.print(over)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
