"""Periodic regularizers (strength set in place per period) and their placement in a model."""

from raytune_periodic.regularizers._base import PeriodicRegularizer
from raytune_periodic.regularizers.dropout import PeriodicDropout
from raytune_periodic.regularizers.noise import GaussianNoise
from raytune_periodic.regularizers.placement import (
    REGULARIZERS,
    WHERE,
    Placement,
    RegularizerSet,
    insert_regularizers,
)
from raytune_periodic.regularizers.sign_flip import SignFlip, algorithm1_flags

__all__ = [
    "REGULARIZERS",
    "WHERE",
    "GaussianNoise",
    "PeriodicDropout",
    "PeriodicRegularizer",
    "Placement",
    "RegularizerSet",
    "SignFlip",
    "algorithm1_flags",
    "insert_regularizers",
]
