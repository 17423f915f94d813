"""The period engine and run specs (pure PyTorch)."""

from raytune_periodic.training.engine import PeriodEngine, TrainOptions, load_state, resolve_device
from raytune_periodic.training.spec import RunSpec, build_engine, load_data, parse_run_spec

__all__ = [
    "PeriodEngine",
    "RunSpec",
    "TrainOptions",
    "build_engine",
    "load_data",
    "load_state",
    "parse_run_spec",
    "resolve_device",
]
