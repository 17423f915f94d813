"""``raytune-periodic`` command line: run, compare, validate, list, train, mlflow-sync, gradcam,
replay, export.

Bad input is one line on stderr and exit code 2, before Ray starts.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from raytune_periodic.errors import ConfigError

if TYPE_CHECKING:
    from raytune_periodic.config import ExperimentConfig


URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="raytune-periodic",
        description="Periodic regularization searches on Ray Tune, tracked in MLflow.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run every method of an experiment config under Ray Tune")
    run.add_argument("config", help="experiment YAML file")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value (YAML-parsed), repeatable",
    )
    run.add_argument("--mlflow-uri", help=URI_HELP)
    run.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    run.add_argument("--storage-path", help="Tune storage path (default: ./runs/ray_results)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="restore unfinished Tuners of the last invocation and finish them (errored trials "
        "are retried)",
    )
    loud = run.add_mutually_exclusive_group()
    loud.add_argument(
        "-v", "--verbose", action="store_true", help="Tune's own progress table per trial"
    )
    loud.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    run.add_argument(
        "--restart",
        action="store_true",
        help="start a new invocation even though the last one did not finish",
    )
    _smoke_args(run)

    cmp_ = sub.add_parser("compare", help="method table and plots of an experiment from MLflow")
    cmp_.add_argument("experiment", help="MLflow experiment name (the config's name)")
    cmp_.add_argument("--mlflow-uri", help=URI_HELP)
    cmp_.add_argument("--out", help="directory for the table file and PNG plots")
    cmp_.add_argument("--format", choices=["md", "csv", "html", "json"], default="md")
    cmp_.add_argument("--invocation", help="invocation id (default: the latest)")
    cmp_.add_argument(
        "--baseline", help="method every other method is compared with (default: the first)"
    )

    cam = sub.add_parser(
        "gradcam", help="Grad-CAM figure: a row per image, a column per run/method"
    )
    cam.add_argument("runs", nargs="*", metavar="RUN_ID", help="trial run ids (one column each)")
    cam.add_argument("--experiment", help="instead of run ids: the best trial of each method")
    cam.add_argument("--invocation", help="invocation id with --experiment (default: the latest)")
    cam.add_argument(
        "--images",
        nargs="+",
        default=["0", "1", "2", "3"],
        metavar="INDEX|FILE",
        help="test-split indices of the first run's dataset, or image files (default: 0 1 2 3)",
    )
    cam.add_argument("--out", default="gradcam.png", help="PNG path (default: ./gradcam.png)")
    cam.add_argument("--mlflow-uri", help=URI_HELP)
    cam.add_argument("--data-root", help="the dataset root here, when not the runs' own root")

    exp = sub.add_parser(
        "export", help="download the model a search selected (method, seed) from MLflow"
    )
    exp.add_argument("experiment", help="MLflow experiment name (the config's name)")
    exp.add_argument("--method", required=True, help="the method whose selected trial to export")
    exp.add_argument("--seed", required=True, help="the seed (rp.seed) of the selected trial")
    exp.add_argument("--out", required=True, help="folder for the models, config and schedule")
    exp.add_argument("--invocation", help="invocation id (default: the latest)")
    exp.add_argument("--register", metavar="NAME", help="also register model/best as NAME")
    exp.add_argument(
        "--agent",
        action="store_true",
        help="export the method's shared PPO agent (ppo_shared) instead: a warm_start folder",
    )
    exp.add_argument("--mlflow-uri", help=URI_HELP)

    rep = sub.add_parser(
        "replay", help="export a trial's per-period schedule from MLflow and replay it"
    )
    rep.add_argument("run_id", help="the trial run whose value/<group> schedule to replay")
    rep.add_argument("--mlflow-uri", help=URI_HELP)
    rep.add_argument(
        "--export", metavar="FILE", help="write the method entry (YAML) to FILE, not stdout"
    )
    rep.add_argument("--run", action="store_true", help="replay it now with the bare engine")
    rep.add_argument("--seed", type=int, help="with --run: train.seed of the replay")
    rep.add_argument("--data-root", help="with --run: the dataset root here, if not the run's")
    rep.add_argument(
        "--model", help="with --run: another registered model (YAML: lenet, {name: mlp})"
    )

    val = sub.add_parser("validate", help="validate an experiment config without running it")
    val.add_argument("config")
    val.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    _smoke_args(val)

    sub.add_parser("list", help="registered models, datasets, regularizers, controllers, methods")

    sync = sub.add_parser(
        "mlflow-sync", help="deliver MLflow writes spooled while the tracking server was down"
    )
    sync.add_argument("--spool", help="spool directory (default: $RP_MLFLOW_SPOOL or ~/.cache/...)")
    sync.add_argument("--mlflow-uri", help="deliver to this URI instead of the spooled one")
    sync.add_argument(
        "--retry-failed",
        action="store_true",
        help="also replay writes the server rejected (kept in the failed-writes log)",
    )

    train = sub.add_parser("train", help="train one run spec with the bare engine (no Ray)")
    train.add_argument("--dataset", default="digits")
    train.add_argument("--model", default="mlp")
    train.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="constant head dropout; omit for periodic U(0, 0.7)",
    )
    train.add_argument("--periods", type=int, default=20)
    train.add_argument("--period-length", type=int, default=20)
    train.add_argument("--seed", type=int, default=0)
    return p


def _smoke_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds-long CPU run on tiny generated data in the datasets' real formats "
        "(first seed, 2 periods, every method)",
    )
    parser.add_argument(
        "--smoke-dir", help="with --smoke: where the tiny data goes (default: a temporary dir)"
    )


@contextlib.contextmanager
def _config(args: argparse.Namespace) -> Iterator[ExperimentConfig]:
    """The validated config of ``args`` (``--set`` applied, then ``--smoke``).

    With ``--smoke`` the tiny data lives until the block ends (``--smoke-dir`` keeps it).
    """
    from raytune_periodic.config import apply_overrides, read_yaml, validate_config

    raw = apply_overrides(read_yaml(args.config), args.set)
    if not args.smoke:
        if args.smoke_dir:
            raise ConfigError("--smoke-dir", "only with --smoke")
        yield validate_config(raw)
        return
    from raytune_periodic.smoke import smoke_config

    with contextlib.ExitStack() as stack:
        workdir = args.smoke_dir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="rp-smoke-")
        )
        raw = smoke_config(raw, workdir)
        print(f"smoke mode: tiny generated data in {workdir}, experiment {raw.get('name')!r}")
        yield validate_config(raw)


def _cmd_run(args: argparse.Namespace) -> int:
    from raytune_periodic.tuning.runner import RunInterrupted, run_experiment

    if args.resume and args.restart:
        raise ConfigError("--restart", "give --resume or --restart, not both")
    with _config(args) as cfg:
        try:
            outcome = run_experiment(
                cfg,
                address=args.address,
                storage_path=args.storage_path,
                mlflow_uri=args.mlflow_uri,
                resume=args.resume,
                restart=args.restart,
                progress="tune" if args.verbose else "none" if args.quiet else "compact",
            )
        except RunInterrupted as exc:
            print(f"interrupted: {exc}", file=sys.stderr)
            return 130
    if not outcome.ok:
        from raytune_periodic.tuning.runner import TrialsErroredError

        print(f"error: {TrialsErroredError(outcome)}", file=sys.stderr)
    print(
        f"experiment {outcome.experiment!r} invocation {outcome.invocation_id} finished in "
        f"{outcome.seconds:.0f} s; MLflow: {outcome.tracking_uri}; Tune: {outcome.storage_path}"
    )
    print(
        f"compare with: raytune-periodic compare {outcome.experiment}"
        + (f" --mlflow-uri {args.mlflow_uri}" if args.mlflow_uri else "")
    )
    return 0 if outcome.ok else 1


def _cmd_compare(args: argparse.Namespace) -> int:
    from raytune_periodic.report import compare_experiment

    text = compare_experiment(
        args.experiment,
        tracking_uri=args.mlflow_uri,
        out_dir=args.out,
        fmt=args.format,
        invocation_id=args.invocation,
        baseline=args.baseline,
    )
    print(text)
    return 0


def _cmd_gradcam(args: argparse.Namespace) -> int:
    from raytune_periodic.report.gradcam import best_runs, gradcam_figure

    if bool(args.runs) == bool(args.experiment):
        raise ConfigError("gradcam", "give run ids or --experiment (not both)")
    runs = (
        best_runs(args.experiment, args.mlflow_uri, args.invocation)
        if args.experiment
        else list(args.runs)
    )
    path = gradcam_figure(
        runs, args.out, images=args.images, tracking_uri=args.mlflow_uri, data_root=args.data_root
    )
    print(f"wrote {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from raytune_periodic.report.export import export_agent, export_model

    if args.agent:
        path = export_agent(
            args.experiment, args.method, args.seed, args.out, tracking_uri=args.mlflow_uri,
            invocation_id=args.invocation,
        )  # fmt: skip
        print(f"wrote {path} (the agent of {args.method} seed {args.seed}: use it as warm_start)")
        return 0
    done = export_model(
        args.experiment, args.method, args.seed, args.out, tracking_uri=args.mlflow_uri,
        invocation_id=args.invocation, register=args.register,
    )  # fmt: skip
    metrics = " ".join(f"{k}={v:.4f}" for k, v in done.selection["metrics"].items())
    print(f"{args.method} seed {args.seed}: trial {done.trial_id} (run {done.run_id}) {metrics}")
    for kind, path in done.models.items():
        print(f"wrote {path} ({kind} weights; mlflow.pytorch.load_model loads it)")
    if done.registered:
        print(f"registered {done.registered}")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    import yaml

    from raytune_periodic.report.replay import (
        client_for,
        export_schedule,
        get_trial_run,
        replay,
        replay_config,
        trial_run_spec,
    )

    schedule = export_schedule(args.run_id, args.mlflow_uri)
    if not args.run:
        text = yaml.safe_dump(replay_config(schedule), sort_keys=False)
        if args.export:
            with open(args.export, "w") as fh:
                fh.write(text)
            print(f"wrote {args.export} ({len(schedule)} periods)")
        else:
            print(text, end="")
        return 0
    client = client_for(args.mlflow_uri)
    spec = trial_run_spec(client, get_trial_run(client, args.run_id))
    if args.data_root:
        spec["dataset"] = {**spec.get("dataset", {}), "root": args.data_root}
    if args.model:
        model = yaml.safe_load(args.model)
        spec["model"] = model if isinstance(model, dict) else {"name": str(model)}
    for rec in replay(spec, schedule, seed=args.seed):
        values = " ".join(f"{k}={v:.6g}" for k, v in rec.values.items())
        print(f"period {rec.period:4d}  val_f1={rec.val_f1:.4f}  {values}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    with _config(args) as cfg:
        pass
    per_seed = [plan.method.trials_per_seed() for plan in cfg.plan.values()]
    n_trials = sum(per_seed) * len(cfg.seeds)
    for reg, names in cfg.plugins.items():
        print(f"plugins ({reg}): " + ", ".join(f"{n} = {p}" for n, p in names.items()))
    print(
        f"ok: {cfg.name}: {len(cfg.methods)} methods x {len(cfg.seeds)} seeds "
        f"({'+'.join(map(str, per_seed))} trials per seed) x {cfg.periods} periods = "
        f"{n_trials} trials, {n_trials * cfg.periods} periods"
    )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from raytune_periodic.controllers import CONTROLLERS, REWARDS
    from raytune_periodic.data import DATASETS
    from raytune_periodic.models import MODELS
    from raytune_periodic.regularizers import REGULARIZERS, WHERE
    from raytune_periodic.tuning.methods import METHODS

    rows = [
        ("models", MODELS.names()),
        ("datasets", DATASETS.names()),
        ("regularizers", REGULARIZERS.names()),
        ("placements", list(WHERE)),
        ("controllers", CONTROLLERS.names()),
        ("rewards", REWARDS.names()),
        ("searches", METHODS.names()),
    ]
    for name, items in rows:
        print(f"{name + ':':14s}{', '.join(items)}")
    return 0


def _cmd_mlflow_sync(args: argparse.Namespace) -> int:
    from raytune_periodic.tracking.sync import sync_spools

    left = sync_spools(args.spool, args.mlflow_uri, retry_failed=args.retry_failed, out=print)
    return 1 if left else 0


def _cmd_train(args: argparse.Namespace) -> int:
    from raytune_periodic.training import build_engine

    controller = (
        {"type": "constant", "values": {"dropout": args.dropout}}
        if args.dropout is not None
        else {"type": "periodic_random", "ranges": {"dropout": [0.0, 0.7]}}
    )
    engine = build_engine(
        {
            "dataset": {"name": args.dataset},
            "model": {"name": args.model},
            "regularizers": [{"kind": "dropout", "where": "head"}],
            "controller": controller,
            "train": {
                "periods": args.periods,
                "period_length": args.period_length,
                "seed": args.seed,
            },
        }
    )
    print(f"{'period':>6} {'epoch':>6} {'dropout':>8} {'train_f1':>8} {'val_f1':>8} {'gap':>7}")
    for r in engine.run():
        print(
            f"{r.period:6d} {r.epoch:6.2f} {r.values['dropout']:8.3f} {r.train_f1:8.3f} "
            f"{r.val_f1:8.3f} {r.gap:7.3f}" + ("  diverged" if r.status != "ok" else "")
        )
    val_loss, val_f1 = engine.evaluate("val")
    test_loss, test_f1 = engine.evaluate("test")
    print(f"full validation F1 {val_f1:.3f}, test F1 {test_f1:.3f}")
    return 0


COMMANDS = {
    "run": _cmd_run,
    "compare": _cmd_compare,
    "validate": _cmd_validate,
    "list": _cmd_list,
    "train": _cmd_train,
    "gradcam": _cmd_gradcam,
    "replay": _cmd_replay,
    "export": _cmd_export,
    "mlflow-sync": _cmd_mlflow_sync,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: resume with `raytune-periodic run CONFIG --resume`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
