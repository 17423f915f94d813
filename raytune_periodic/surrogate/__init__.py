"""Surrogate-network sparseness HPO with Nevergrad DE/PSO (the surrogate paper's Algorithm 1).

- :mod:`.sparseness`: the 8-dim HypParaSet (eq. 8) and the search box;
- :mod:`.fc_head`: the four strategies on a two-FC head, or a one-FC head (ResNet20) (eqs. 2–7);
- :mod:`.networks`: the one-convolution surrogate (Table 2), 'original+surrogate' fitting with
  unilateral Euclidean losses (eq. 9) and FLOPs (§2.4);
- :mod:`.original`: the original network, seeded or from a pretrained state dict;
- :mod:`.objective`: eq. 11;
- :mod:`.optimizers` / :mod:`.de_rand1` / :mod:`.ga`: Nevergrad PSO and DE/rand/1/bin, and Table
  5's GA (tournament 2), in populations;
- :mod:`.algorithm`: Algorithm 1, resumable, candidates as Ray tasks (:mod:`.executors`);
- :mod:`.baselines`: fixed settings, tied grid search, EA without surrogate (not the paper's);
- :mod:`.rbf`: Table 5's RBF-based surrogate (HORD: cubic RBF + DYCORS over full trainings).

Importing this package needs torch only; Nevergrad is imported when an optimizer is built and Ray
when a Ray executor is.
"""

from raytune_periodic.surrogate.algorithm import SurrogateHPO, SurrogateHPOConfig, ea_config
from raytune_periodic.surrogate.baselines import run_grid, tied_grid, train_original
from raytune_periodic.surrogate.executors import RayExecutor, SerialExecutor, make_executor
from raytune_periodic.surrogate.networks import (
    PAPER_TABLE2,
    ConvSpec,
    EtaWeights,
    FusedNet,
    SurrogateNet,
    build_surrogate,
    count_flops,
    flops_ratio,
)
from raytune_periodic.surrogate.objective import KAPPA, evaluate, objective
from raytune_periodic.surrogate.optimizers import OptimizerOptions, PopulationOptimizer
from raytune_periodic.surrogate.sparseness import (
    NAMES,
    HypParaSet,
    SearchSpace,
    SparsenessTerm,
    SparseTwoFC,
    TwoFCHead,
    attach_sparseness,
)
from raytune_periodic.surrogate.training import SolverOptions

__all__ = [
    "KAPPA",
    "NAMES",
    "PAPER_TABLE2",
    "ConvSpec",
    "EtaWeights",
    "FusedNet",
    "HypParaSet",
    "OptimizerOptions",
    "PopulationOptimizer",
    "RayExecutor",
    "SearchSpace",
    "SerialExecutor",
    "SolverOptions",
    "SparseTwoFC",
    "SparsenessTerm",
    "SurrogateHPO",
    "SurrogateHPOConfig",
    "SurrogateNet",
    "TwoFCHead",
    "attach_sparseness",
    "build_surrogate",
    "count_flops",
    "ea_config",
    "evaluate",
    "flops_ratio",
    "make_executor",
    "objective",
    "run_grid",
    "tied_grid",
    "train_original",
]
