"""The cost-aware method: an Optuna sampler that spends on cheap trials first (Protein's idea).

Two Gaussian processes, Optuna's own (`optuna._gp`), are fitted in the [-1, 1]-normalised space:
one to the score, one to log cost. Candidates are drawn uniformly and around the Pareto front
of cost against score (Gaussian steps of each key's `scale`), rounded as the keys round, and
ranked by expected improvement per unit of cost**alpha ("cost cooling": alpha falls from 1 to
0 over the first half of the budget, so early trials favour cheap configurations and later ones
go for the score alone). Running trials enter the score model at its own prediction (kriging
believer), so parallel slots do not all ask for the same point.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from puffctl.sweep.spaces import Space
from puffctl.sweep.tuner import COST_ATTR

#: The cost exponent reaches 0 after this fraction of the trial budget.
COOLING_FRACTION = 0.5
CANDIDATES = 2048


def pareto_mask(scores: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """True where no other point has both a higher-or-equal score and a lower-or-equal cost (one strictly)."""
    better_or_equal = (scores[None, :] >= scores[:, None]) & (costs[None, :] <= costs[:, None])
    strictly = (scores[None, :] > scores[:, None]) | (costs[None, :] < costs[:, None])
    return ~(better_or_equal & strictly).any(axis=1)


class CostAwareSampler(BaseSampler):
    """Expected improvement per cost**alpha over Optuna's GPs, searching around the cost/score Pareto front."""

    def __init__(self, spaces: Mapping[str, Space], budget: int, *, seed: int | None = None, n_startup: int | None = None) -> None:
        self._spaces = dict(spaces)
        self._keys = list(self._spaces)
        self._budget = max(1, budget)
        self._rng = np.random.default_rng(seed)
        self._random = RandomSampler(seed=seed)
        self._n_startup = n_startup if n_startup is not None else min(10, len(self._keys) + 2)
        self._score_cache = None
        self._cost_cache = None

    def reseed_rng(self) -> None:
        """Optuna calls this when a study is used from several workers."""
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """Every swept key, as the normalised float Optuna stores."""
        return {key: FloatDistribution(-1.0, 1.0) for key in self._keys}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution):
        """Keys outside the relative sample (the start-up trials): uniform."""
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, float]:
        """The next point: uniform while too few trials finished, then the best candidate by cost-cooled EI."""
        finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if all(k in t.params for k in self._keys)]
        if len(finished) < self._n_startup or not search_space:
            return {}
        from optuna._gp.thread_limiting import limit_threads_in_optimization

        with limit_threads_in_optimization():  # one thread: torch's and BLAS's pools fight otherwise (4x slower)
            return self._suggest(study, trial, finished)

    def _suggest(self, study: Study, trial: FrozenTrial, finished: list[FrozenTrial]) -> dict[str, float]:
        from optuna._gp import gp, prior

        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        X = np.array([[t.params[k] for k in self._keys] for t in finished])
        scores = sign * np.array([t.value for t in finished], dtype=float)
        costs = np.array([max(float(t.user_attrs.get(COST_ATTR) or 1.0), 1e-12) for t in finished])
        y = (scores - scores.mean()) / max(scores.std(), 1e-12)
        unit = (X + 1.0) / 2.0
        categorical = np.zeros(len(self._keys), dtype=bool)

        def fit(values: np.ndarray, cache):
            return gp.fit_kernel_params(
                X=unit, Y=values, is_categorical=categorical, log_prior=prior.default_log_prior,
                minimum_noise=prior.DEFAULT_MINIMUM_NOISE_VAR, deterministic_objective=False, gpr_cache=cache,
            )

        import torch

        score_gp = self._score_cache = fit(y, self._score_cache)
        running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number != trial.number and all(k in t.params for k in self._keys)]
        if running:
            running_unit = torch.from_numpy((np.array([[t.params[k] for k in self._keys] for t in running]) + 1.0) / 2.0)
            with torch.no_grad():
                believed, _ = score_gp.posterior(running_unit)
            score_gp.append_running_data(running_unit, believed)

        candidates = self._candidates(X, scores, costs)
        cand = torch.from_numpy((candidates + 1.0) / 2.0)
        with torch.no_grad():
            mean_train, _ = score_gp.posterior(torch.from_numpy(unit))
            mean, var = score_gp.posterior(cand)
            from optuna._gp.acqf import logei

            acquisition = logei(mean, var.clamp_min(1e-12), float(mean_train.max())).numpy()
        alpha = max(0.0, 1.0 - len(finished) / (COOLING_FRACTION * self._budget))
        log_costs = np.log(costs)
        if alpha > 0 and log_costs.std() > 1e-9:
            spread = log_costs.std()
            cost_gp = self._cost_cache = fit((log_costs - log_costs.mean()) / spread, self._cost_cache)
            with torch.no_grad():
                predicted, _ = cost_gp.posterior(cand)
            acquisition = acquisition - alpha * predicted.numpy() * spread
        best = candidates[int(np.argmax(acquisition))]
        return {key: float(value) for key, value in zip(self._keys, best)}

    def _candidates(self, X: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> np.ndarray:
        """Uniform points plus Gaussian steps (each key's scale) around the Pareto front and the best trials, rounded."""
        dims = len(self._keys)
        uniform = self._rng.uniform(-1.0, 1.0, size=(CANDIDATES // 2, dims))
        front = X[pareto_mask(scores, costs)]
        top = X[np.argsort(-scores)[: max(1, dims)]]
        centres = np.concatenate([front, top])
        picks = centres[self._rng.integers(0, len(centres), size=CANDIDATES - len(uniform))]
        scales = np.array([self._spaces[k].scale_normalized for k in self._keys])
        steps = self._rng.normal(size=picks.shape) * scales * self._rng.choice([0.25, 1.0], size=(len(picks), 1))
        local = np.clip(picks + steps, -1.0, 1.0)
        candidates = np.concatenate([uniform, local])
        for column, key in enumerate(self._keys):
            space = self._spaces[key]
            if space.kind in ("int", "pow2"):
                candidates[:, column] = [space.snap(x) for x in candidates[:, column]]
        return candidates


def sampler_for(method: str, spaces: Mapping[str, Space], budget: int, seed: int | None) -> BaseSampler:
    """The Optuna sampler of a sweep method: random, Optuna's default (TPE), or cost-aware."""
    if method == "random":
        return RandomSampler(seed=seed)
    if method == "default":
        return optuna.samplers.TPESampler(seed=seed)
    return CostAwareSampler(spaces, budget, seed=seed)

