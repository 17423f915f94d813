"""Periodic regularizers (strength set in place per period) and their placement in a model."""

from raytune_periodic.regularizers._base import PeriodicRegularizer
from raytune_periodic.regularizers.augment import Augment, apply_augmentation
from raytune_periodic.regularizers.cliff_relu import AutoReLU, CliffReLU, cliff_relu
from raytune_periodic.regularizers.dropout import PeriodicDropout
from raytune_periodic.regularizers.model_level import ModelRegularizer, WeightEWA
from raytune_periodic.regularizers.noise import GaussianNoise
from raytune_periodic.regularizers.penalties import (
    AdaptivePenalty,
    L1Penalty,
    L2Penalty,
    MaxNorm,
    penalised_weights,
)
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
    "AdaptivePenalty",
    "Augment",
    "AutoReLU",
    "CliffReLU",
    "GaussianNoise",
    "L1Penalty",
    "L2Penalty",
    "MaxNorm",
    "ModelRegularizer",
    "WeightEWA",
    "apply_augmentation",
    "cliff_relu",
    "penalised_weights",
    "PeriodicDropout",
    "PeriodicRegularizer",
    "Placement",
    "RegularizerSet",
    "SignFlip",
    "algorithm1_flags",
    "insert_regularizers",
]
