"""The original network of every surrogate method, built one way: seeded, optionally from a
pretrained checkpoint, with its sparse FC head attached.

Algorithm 1 "select[s] the face recognition network for fine tuning" in its first iteration
(line 4): ``pretrained`` names a file holding a **state dict** (a mapping of parameter names to
tensors), read with ``torch.load(weights_only=True)``, so no pickled code ever runs. Tensors whose
name and shape match the model's are loaded; the rest of the model keeps its seeded
initialisation (a face-identity classifier does not fit 7 expressions). ``pretrained_strict``
demands that every tensor of the model is in the file with its shape and nothing else is. Every
method of a config (Algorithm 1, the fixed settings, the grid, the EA and RBF comparators) builds
its original here, so they all start from the same weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from raytune_periodic.data._base import DataSplits
from raytune_periodic.errors import ConfigError
from raytune_periodic.models import build_model
from raytune_periodic.surrogate.fc_head import attach_sparseness
from raytune_periodic.surrogate.networks import SurrogateNet, build_surrogate
from raytune_periodic.surrogate.sparseness import HypParaSet
from raytune_periodic.surrogate.training import derive_seed


def read_state_dict(path: str | Path, field: str = "surrogate.pretrained") -> dict[str, Any]:
    """The state dict in ``path`` (tensors only: ``weights_only=True``); one-line errors."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(field, f"{file} does not exist")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or pickled objects beyond tensors
        msg = f"{file}: not a weights-only state dict ({type(exc).__name__})"
        raise ConfigError(field, msg) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConfigError(field, f"{file}: expected a state dict (parameter name -> tensor)")
    return dict(state)


def load_pretrained(
    model: nn.Module, path: str | Path, strict: bool = False, field: str = "surrogate.pretrained"
) -> dict[str, list[str]]:
    """Copy the matching tensors of the state dict in ``path`` into ``model``.

    Returns ``loaded``, ``skipped`` (in the file, absent or another shape in the model) and
    ``kept`` (the model's own, not in the file). Nothing matching, or anything not matching with
    ``strict``, is a ``ConfigError``.
    """
    state, own = read_state_dict(path, field), model.state_dict()
    loaded = sorted(k for k, v in state.items() if k in own and own[k].shape == v.shape)
    skipped = sorted(set(state) - set(loaded))
    kept = sorted(set(own) - set(loaded))
    if not loaded:
        raise ConfigError(field, f"{path}: no tensor matches the model's names and shapes")
    if strict and (skipped or kept):
        what = skipped[0] if skipped else kept[0]
        msg = f"{path}: {len(skipped)} tensors do not fit the model, {len(kept)} are missing"
        raise ConfigError(field, f"{msg} (e.g. {what!r}); pretrained_strict: false skips them")
    with torch.no_grad():
        for key in loaded:
            own[key].copy_(state[key])
    return {"loaded": loaded, "skipped": skipped, "kept": kept}


def build_original(
    config: Any, data: DataSplits, hyp: HypParaSet | None, with_surrogate: bool = False
) -> tuple[nn.Module, SurrogateNet | None]:
    """``config.model`` seeded by ``derive_seed(seed, "init")``, the pretrained weights loaded
    (``config.pretrained``), its FC head made sparse with ``hyp``; and, ``with_surrogate``, its
    surrogate (``config.conv``), initialised next from the same seeded stream.

    ``config`` is a :class:`~raytune_periodic.surrogate.config.SurrogateHPOConfig`.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "init"))
        opts = config.model_options
        model = build_model(config.model, data.input_shape, data.num_classes, **opts)
        if config.pretrained:
            load_pretrained(model, config.pretrained, config.pretrained_strict)
        attach_sparseness(
            model, hyp, inverted=config.inverted_dropout,
            x_before_activation=config.x_before_activation,
        )  # fmt: skip
        surrogate = None
        if with_surrogate:
            surrogate = build_surrogate(model, data.input_shape, config.conv)
    return model, surrogate


def rebuild_original(
    builder: Mapping[str, Any], input_shape: Sequence[int], num_classes: int
) -> nn.Module:
    """The original network a surrogate trial logged (``rp_models.json``'s ``builder``: the
    method's name, options and periods), for a state dict to be loaded into: the pretrained file
    is not read (the logged weights replace every tensor; the file is often on another machine).
    """
    from raytune_periodic.tuning.methods.surrogate import hpo_config

    skip = {"pretrained", "pretrained_strict"}
    options = {k: v for k, v in dict(builder["options"]).items() if k not in skip}
    config = hpo_config(str(builder["method"]), options, int(builder["periods"]))
    shape = SimpleNamespace(input_shape=tuple(input_shape), num_classes=int(num_classes))
    return build_original(config, shape, None)[0]  # type: ignore[arg-type]


__all__ = ["build_original", "load_pretrained", "read_state_dict", "rebuild_original"]
