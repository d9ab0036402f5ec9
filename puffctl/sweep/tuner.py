"""The sweep's tuner: an Optuna study asked and told one trial at a time, stored in a database.

Optuna sees every swept key as a float in [-1, 1] (the normalised space of `spaces.py`); the
tuner decodes each suggestion into the key's value (rounded as the key rounds) before a trial
runs, and records each finished trial's score and cost. Trial 1 (number 0) is every key at its
centre. The study lives in SQLite in the sweep directory, or in any database URL given as
`storage:` (None keeps it in memory, for benchmarks); reopening it continues the same study
(a resumed sweep asks for what is left).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from puffctl.errors import PuffctlError
from puffctl.sweep.spaces import Space

VALUES_ATTR = "values"
REASON_ATTR = "reason"
COST_ATTR = "cost"


@dataclass
class TrialRecord:
    """One trial as the sweep shows it: number (0 = trial 1), state, the keys' values, score, cost."""

    number: int
    state: str
    params: dict[str, Any]
    score: float | None = None
    cost: float | None = None
    reason: str | None = None
    normalized: dict[str, float] = field(default_factory=dict, repr=False)


STATES = {"COMPLETE": "completed", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting", "PRUNED": "failed"}


def sqlite_url(path) -> str:
    """The storage URL of a SQLite study file."""
    return f"sqlite:///{path}"


class Tuner:
    """Ask for trials, tell their results: the one interface between a sweep and Optuna."""

    def __init__(self, spaces: Mapping[str, Space], *, storage: str | None, name: str, method: str, direction: str, budget: int, seed: int = 0) -> None:
        import optuna

        from puffctl.sweep.costaware import sampler_for

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spaces = dict(spaces)
        self.method = method
        self.budget = budget
        signature = {key: [s.kind, s.min, s.max, s.center, s.scale] for key, s in self.spaces.items()}
        if storage is None:
            storage = optuna.storages.InMemoryStorage()
        try:
            existing = optuna.load_study(study_name=name, storage=storage) if name in optuna.get_all_study_names(storage) else None
        except Exception as error:  # noqa: BLE001 - any database error is the user's URL or file
            raise PuffctlError(f"cannot open the study storage {storage}: {str(error).splitlines()[0]}", exit_code=1) from None
        previous = len(existing.trials) if existing is not None else 0
        if existing is not None:
            stored = existing.user_attrs
            if stored.get("spaces") != signature or stored.get("method") != method or stored.get("direction") != direction:
                raise PuffctlError(f"study {name!r} in {storage} was started with other search spaces, method or direction; use a new sweep name")
        self.study = optuna.create_study(
            storage=storage, study_name=name, direction=direction, load_if_exists=True,
            sampler=sampler_for(method, self.spaces, budget, seed + previous),
        )
        if existing is None:
            self.study.set_user_attr("spaces", signature)
            self.study.set_user_attr("method", method)
            self.study.set_user_attr("direction", direction)
            self.study.enqueue_trial({key: space.normalize(space.center) for key, space in self.spaces.items()})

    def ask(self) -> TrialRecord:
        """The next trial to run (the centre first), recorded as running."""
        from optuna.distributions import FloatDistribution

        trial = self.study.ask({key: FloatDistribution(-1.0, 1.0) for key in self.spaces})
        values = {key: space.decode(trial.params[key]) for key, space in self.spaces.items()}
        trial.set_user_attr(VALUES_ATTR, values)
        return TrialRecord(trial.number, "running", values, normalized=dict(trial.params))

    def tell(self, number: int, score: float, cost: float) -> None:
        """Record a finished trial's score (the metric) and cost (env steps or seconds)."""
        if not math.isfinite(score):
            self.fail(number, f"metric is {score}")
            return
        self._trial(number).set_user_attr(COST_ATTR, float(cost))
        self.study.tell(number, float(score))

    def fail(self, number: int, reason: str) -> None:
        """Record a trial as failed: the tuner learns nothing from it and the sweep goes on."""
        from optuna.trial import TrialState

        self._trial(number).set_user_attr(REASON_ATTR, reason)
        self.study.tell(number, state=TrialState.FAIL)

    def _trial(self, number: int):
        import optuna

        frozen = self.study.trials[number]
        return optuna.trial.Trial(self.study, frozen._trial_id)

    def trials(self) -> list[TrialRecord]:
        """Every trial so far, in order."""
        records = []
        for trial in self.study.get_trials(deepcopy=False):
            values = trial.user_attrs.get(VALUES_ATTR) or {
                key: space.decode(trial.params[key]) for key, space in self.spaces.items() if key in trial.params
            }
            records.append(
                TrialRecord(
                    number=trial.number,
                    state=STATES.get(trial.state.name, trial.state.name.lower()),
                    params=dict(values),
                    score=trial.value if trial.state.name == "COMPLETE" else None,
                    cost=trial.user_attrs.get(COST_ATTR),
                    reason=trial.user_attrs.get(REASON_ATTR),
                    normalized=dict(trial.params),
                )
            )
        return records

    def running(self) -> list[TrialRecord]:
        """Trials asked but not told: after a crash these are rerun, not asked again."""
        return [record for record in self.trials() if record.state == "running"]

    def remaining(self) -> int:
        """How many new trials the budget still allows."""
        return max(0, self.budget - sum(record.state in ("completed", "failed", "running") for record in self.trials()))

    def best(self) -> TrialRecord | None:
        """The completed trial with the best score, or None."""
        done = [record for record in self.trials() if record.state == "completed"]
        if not done:
            return None
        pick = max if self.study.direction.name == "MAXIMIZE" else min
        return pick(done, key=lambda record: record.score)

    def pareto(self) -> list[TrialRecord]:
        """Completed trials that no other beats on both score and cost, cheapest first."""
        import numpy as np

        from puffctl.sweep.costaware import pareto_mask

        done = [record for record in self.trials() if record.state == "completed"]
        if not done:
            return []
        sign = 1.0 if self.study.direction.name == "MAXIMIZE" else -1.0
        mask = pareto_mask(sign * np.array([r.score for r in done]), np.array([r.cost or 0.0 for r in done]))
        return sorted((record for record, keep in zip(done, mask) if keep), key=lambda record: record.cost or 0.0)
