"""``--smoke``: rewrite an experiment config so that it runs in seconds on a CPU.

``smoke_config(raw, workdir)`` returns a copy of a raw (unvalidated) config in which

- every dataset that lives on disk (CIFAR-10/100, FER2013, AffectNet, Tiny-ImageNet) is replaced
  by a tiny random one written under ``workdir`` in the dataset's *real* on-disk format
  (``raytune_periodic.data.synthetic``) and ``root`` points at it, so a placeholder path validates
  and the real loader code runs; bundled datasets (digits, iris) get a small ``train_size``;
  image sizes shrink to at most 64 px where the dataset has a ``size`` option;
- every method is kept; only the first seed; ``budget.periods`` = 2; ``budget.trials`` = 1 (2 when
  a PBT/PB2 method needs a population) with grids cut to that many points; one pass per period,
  small batches, the CPU; one trial per CPU, no GPU; ResNets get the ImageNet stem;
- each method shrinks the knobs that make it slow (``SearchMethod.smoke_entry``: grids cut to the
  trial count, PBT intervals, surrogate populations; a controller method asks its controller,
  ``Controller.smoke_options``: PPO batch sizes, toggle and periodic intervals);
- the experiment name gains ``-smoke`` so smoke runs never mix with real ones in MLflow.

Imports the core (``data.synthetic``: numpy, PIL) and the method classes (no Ray, MLflow, Optuna
or Nevergrad at import).
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from raytune_periodic.data import synthetic
from raytune_periodic.errors import ConfigError

SMOKE_PERIODS = 2
SMOKE_SIZE = 64  # largest image side in smoke mode (datasets with a ``size`` option)
SMOKE_TRAIN: dict[str, Any] = {
    "period_length": 1,
    "batch_size": 8,
    "val_batches": 1,
    "eval_batch_size": 64,
    "device": "cpu",
    "amp": False,
    "num_workers": 0,
}
SMALL_TRAIN_SIZE = {"digits": 100, "iris": 30}
IMAGENET_STEM = {"resnet18", "resnet34"}  # small_stem: false keeps 32/48 px inputs cheap


def _tag(names: list[str]) -> str:
    """A stable short tag of a class list (folder names differ when the classes differ)."""
    return f"{zlib.crc32(','.join(names).encode()):08x}"


def _class_names(classes: Any, numbered: Any, default: list[str]) -> list[str]:
    """The class folders a folder dataset's ``classes`` option asks for (a list, or a count)."""
    if isinstance(classes, list | tuple) and classes:
        return [str(c) for c in classes]
    if isinstance(classes, int) and not isinstance(classes, bool) and classes >= 2:
        return numbered(classes)
    return default


#: folder-layout datasets: folder prefix, names for a class count, default names, writer, sizes
_FOLDER_SETS: dict[str, tuple[str, Any, Any, Any, dict[str, int]]] = {
    "affectnet": (
        "affectnet",
        lambda n: [str(k) for k in range(n)],  # numeric folders, as AffectNet's labels
        lambda: list(synthetic.AFFECTNET_EMOTIONS),
        synthetic.write_affectnet,
        {"n_train": 6, "n_val": 2, "side": 32},
    ),
    "tiny_imagenet": (
        "tiny-imagenet",
        synthetic.tiny_imagenet_wnids,
        lambda: synthetic.tiny_imagenet_wnids(3),
        synthetic.write_tiny_imagenet,
        {"n_train": 5, "n_val": 2, "side": 64},
    ),
}


def write_smoke_data(name: str, opts: Mapping[str, Any], workdir: Path) -> dict[str, Any] | None:
    """Write a tiny copy of dataset ``name`` under ``workdir``; the options that point at it.

    Returns None for datasets that are not read from disk (digits, iris, unknown names).
    """
    folder = workdir / name
    if name in ("cifar10", "cifar100"):
        if not folder.exists():
            if name == "cifar10":
                synthetic.write_cifar10(folder, per_batch=20, n_test=20)
            else:
                synthetic.write_cifar100(folder, n_train=300, n_test=100)
        return {"root": str(folder), "verify": False}
    if name == "fer2013":
        path = folder / "fer2013.csv"
        if not path.exists():
            synthetic.write_fer2013_csv(path, counts=(56, 14, 14))
        return {"root": str(path)}
    if name in _FOLDER_SETS:
        prefix, numbered, default, write, sizes = _FOLDER_SETS[name]
        names = _class_names(opts.get("classes"), numbered, default())
        folder = workdir / f"{prefix}-{len(names)}-{_tag(names)}"
        if not folder.exists():
            write(folder, names, **sizes)
        return {"root": str(folder)}
    return None


def _smoke_dataset(ds: MutableMapping[str, Any], name: str, workdir: Path) -> None:
    """Rewrite one dataset section in place (``name``: the dataset it resolves to)."""
    found = write_smoke_data(name, ds, workdir)
    if found is not None:
        ds.update(found)
        if name in ("affectnet", "tiny_imagenet"):
            ds["size"] = min(int(ds.get("size") or SMOKE_SIZE), SMOKE_SIZE)
            ds["stat_samples"] = 16
        ds.pop("train_size", None)  # the tiny data may hold fewer examples
    elif name in SMALL_TRAIN_SIZE:
        size = ds.get("train_size")
        small = SMALL_TRAIN_SIZE[name]
        ds["train_size"] = small if size is None else min(int(size), small)


def _dataset_section(section: Any) -> dict[str, Any] | None:
    if isinstance(section, str):
        return {"name": section}
    return dict(section) if isinstance(section, Mapping) else None


def _smoke_train(train: Any) -> dict[str, Any]:
    out = dict(train) if isinstance(train, Mapping) else {}
    out.update(SMOKE_TRAIN)
    return out


def _smoke_model(spec: MutableMapping[str, Any]) -> None:
    """ResNet-18/34 with the ImageNet stem (4x downsampling): a full-resolution 32/48 px stem
    makes a CPU step several times slower, and smoke runs test the plumbing, not the accuracy."""
    model = spec.get("model")
    model = {"name": model} if isinstance(model, str) else model
    if isinstance(model, dict) and model.get("name") in IMAGENET_STEM:
        spec["model"] = {**model, "small_stem": False}


def _method_class(name: str, entry: Any) -> Any:
    """The method's ``SearchMethod`` class, or None where validation will report the entry."""
    from raytune_periodic.tuning.methods import method_class

    if not isinstance(entry, Mapping):
        return None
    try:
        return method_class(name, entry)
    except ConfigError:
        return None


def smoke_config(raw: Mapping[str, Any], workdir: str | Path) -> dict[str, Any]:
    """A copy of the raw config ``raw`` that runs in seconds on a CPU (see the module doc).

    Tiny data is written under ``workdir`` (created if missing; reused when already there).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError("config", "must hold a mapping at the top level")
    work = Path(workdir).expanduser().absolute()
    work.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = copy.deepcopy(dict(raw))
    if isinstance(data.get("name"), str):
        data["name"] = f"{data['name']}-smoke"
    mlflow = data.get("mlflow")
    if isinstance(mlflow, dict) and isinstance(mlflow.get("experiment"), str):
        mlflow["experiment"] = f"{mlflow['experiment']}-smoke"
    seeds = data.get("seeds")
    if isinstance(seeds, list) and seeds:
        data["seeds"] = seeds[:1]

    methods = data.get("methods") if isinstance(data.get("methods"), dict) else {}
    classes = {name: _method_class(name, e) for name, e in methods.items()}
    trials = max([c.min_trials for c in classes.values() if c is not None], default=1)
    budget = dict(data.get("budget") or {})
    budget.update({"periods": SMOKE_PERIODS, "trials": trials})
    data["budget"] = budget

    base = data.get("base") if isinstance(data.get("base"), dict) else None
    if base is None:
        base = data["base"] = {}
    base_ds = _dataset_section(base.get("dataset", "digits")) or {"name": "digits"}
    original_ds = dict(base_ds)
    _smoke_dataset(base_ds, str(base_ds.get("name", "digits")), work)
    base["dataset"] = base_ds
    base["train"] = _smoke_train(base.get("train"))
    _smoke_model(base)

    for name, entry in methods.items():
        if not isinstance(entry, dict):
            continue  # validation reports it
        over = entry.get("base")
        if isinstance(over, dict):
            if "dataset" in over:
                ds = _dataset_section(over["dataset"])
                if ds is not None:  # the whole merged section: its name and classes decide
                    ds = {**original_ds, **ds}
                    _smoke_dataset(ds, str(ds.get("name", "digits")), work)
                    over["dataset"] = ds
            if "train" in over:
                over["train"] = _smoke_train(over["train"])
            if "model" in over:
                _smoke_model(over)
        if classes[name] is not None:
            classes[name].smoke_entry(entry, trials)

    tune = dict(data.get("tune") or {})
    tune.update({"iteration_periods": 1, "checkpoint_every": SMOKE_PERIODS})
    tune["resources"] = {"cpu": 1, "gpu": 0}
    data["tune"] = tune
    return data


__all__ = ["SMOKE_PERIODS", "smoke_config", "write_smoke_data"]
