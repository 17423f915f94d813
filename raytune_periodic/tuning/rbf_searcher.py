"""The ``rbf_surrogate`` method's Tune searcher: :class:`~raytune_periodic.surrogate.rbf.RBFSearch`
proposing each trial's fixed sparseness values (``config["values"]``) from the scores of the
trials finished so far. A module of its own so Tune can pickle the searcher by reference."""

from __future__ import annotations

import math
import pickle
from typing import Any

from ray.tune.search import Searcher

from raytune_periodic.surrogate.rbf import RBFSearch
from raytune_periodic.surrogate.sparseness import SearchSpace


class RBFSearcher(Searcher):
    """Suggests ``{"values": <8 names>}``; learns ``−metric`` (mode max) of each finished trial."""

    def __init__(
        self, space: SearchSpace, budget: int, seed: int = 0, n_init: int | None = None
    ) -> None:
        super().__init__(metric=None, mode="max")
        self.rbf = RBFSearch(space, budget, seed, n_init)

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.rbf.asked >= self.rbf.budget:
            return Searcher.FINISHED
        return {"values": self.rbf.ask(trial_id).to_dict()}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id not in self.rbf.pending:
            return
        score = None if error or not result else result.get(self._metric or "")
        if not isinstance(score, int | float) or not math.isfinite(score):
            self.rbf.tell(trial_id, math.nan)  # counted as the worst so far
            return
        self.rbf.tell(trial_id, -float(score) if self._mode == "max" else float(score))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump({"rbf": self.rbf, "metric": self._metric, "mode": self._mode}, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            state = pickle.load(handle)
        self.rbf, self._metric, self._mode = state["rbf"], state["metric"], state["mode"]
