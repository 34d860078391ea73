"""Command-line interface: argument parsing only; every subcommand calls one function.

Owns the commands' words, their help and examples, and turning a UserError into one
line on stderr with exit status 2 (--debug shows the traceback). Never trains,
loads data or formats metrics itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import UserError

MAIN_HELP = """\
Train, evaluate and study image classifiers on small images.

examples:
  cifarlab train --recipe fast --data ~/data/cifar10-jpeg/train
  cifarlab eval runs/20261127-101500-fast --data ~/data/test
  cifarlab train --resume runs/20261127-101500-fast
  cifarlab sweep --recipe fast --data ./train --grid optim.muon_lr=0.12,0.24 --grid epochs=6,8
  cifarlab <command> --help     # every command's options and examples
"""

TRAIN_HELP = """\
examples:
  cifarlab train --data ./my_images --out runs/mine    # settings chosen from the data
  cifarlab train --data ./my_images --print-config     # ... which, and why
  cifarlab train --data cifar10 epochs=5 label_smoothing=0.1
  cifarlab train --data ./my_images model=resnet18 model_args.width=32
  cifarlab train --config exp.yaml --print-config
  cifarlab train --resume runs/mine

key=value overrides use dotted names (optim.lr=0.01, augment.flip=0);
`cifarlab train --list-keys` lists every key with its default."""


CHECKPOINT_HELP = "best (default), last, or an epoch kept by keep_checkpoints (e.g. 10)"


def _checkpoint_arg(text: str) -> str:
    from .runs import checkpoint_name

    try:
        return checkpoint_name(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def _command(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose epilog (its examples) keeps its line breaks."""
    return sub.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifarlab", description=MAIN_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cifarlab {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t = _command(sub, "train", help="train a model into a run folder", epilog=TRAIN_HELP)
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.01 epochs=5")
    t.add_argument("--recipe", help="named config to start from (cifarlab recipes)")
    t.add_argument("--config", metavar="FILE.yaml", help="YAML config applied after the recipe")
    t.add_argument("--data", metavar="SPEC", help="cifar10 | cifar100 | fashion-mnist | mnist | PATH to an image folder")
    t.add_argument("--data-root", metavar="DIR", help="where named sets and the decode cache live (default ~/.cache/cifarlab)")
    t.add_argument("--out", metavar="DIR", help="run folder to create (default runs/<time>-<model>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    t.add_argument("--stop-after-epochs", type=int, default=0, metavar="N",
                   help="stop after the first N epochs of the full schedule (resume later for the rest)")
    t.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    t.add_argument("--list-keys", action="store_true", help="list every config key with its default and exit")
    t.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to RUN_DIR/tensorboard")
    t.add_argument("--mlflow", nargs="?", const="local", metavar="URI",
                   help="track the run in MLflow (default store: mlflow.db beside the run folders)")
    _add_common(t)

    tr = _command(sub, "track", help="upload a run folder to MLflow (a run trained without it, or while it was down)",
                        epilog="example:\n  cifarlab track runs/mine --mlflow http://127.0.0.1:5000")
    tr.add_argument("run_dir", metavar="RUN_DIR")
    tr.add_argument("--mlflow", default="local", metavar="URI",
                    help="tracking URI (default: mlflow.db beside the run folder)")
    _add_common(tr)

    e = _command(sub, "eval", help="score a trained run on a labelled folder or its validation split",
                       epilog="examples:\n  cifarlab eval runs/mine --data ~/data/test   # test/<class>/*.png\n"
                              "  cifarlab eval runs/mine --bn-stats recalibrate   # precise batch-norm statistics")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--data", metavar="PATH", help="folder laid out PATH/<class>/* (default: the run's validation split)")
    e.add_argument("--checkpoint", type=_checkpoint_arg, default="best", help=CHECKPOINT_HELP)
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    e.add_argument("--int8", action="store_true", help="score the int8-quantized model (CPU) that predict --int8 uses")
    e.add_argument("--bn-stats", choices=["run", "running", "batch", "recalibrate"], default="run",
                   help="batch-norm statistics: as the run scored (default), stored (eval mode), each batch's own, "
                        "or recomputed from training images first")
    e.add_argument("--calibration-images", type=int, metavar="N",
                   help="with --bn-stats recalibrate: how many (default: the run's bn_recalibrate, else 2000)")
    _add_common(e)

    p = _command(sub, "predict", help="predict classes of images with a trained run",
                       epilog="examples:\n  cifarlab predict runs/mine img1.png photos/ 'more/*.jpg' --topk 3\n"
                              "  cifarlab predict runs/mine test/ --kaggle --csv submission.csv\n"
                              "  cifarlab predict runs/mine test/ --int8 --tta none --csv p.csv   # fastest on a CPU")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or quoted globs")
    p.add_argument("--csv", metavar="OUT.csv", help="write predictions here instead of printing them")
    p.add_argument("--topk", type=int, default=1, help="how many classes per image (default 1)")
    p.add_argument("--kaggle", action="store_true", help="with --csv: write id,label rows (ids = file stems)")
    p.add_argument("--checkpoint", type=_checkpoint_arg, default="best", help=CHECKPOINT_HELP)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-bad-images", action="store_true", help="skip undecodable files instead of stopping")
    p.add_argument("--tta", choices=["none", "flip", "flip_translate"], help="override the run's test-time augmentation")
    p.add_argument("--int8", action="store_true",
                   help="int8 convolutions on the CPU: ~1.6x the bf16 forward; calibrated once per checkpoint (see eval --int8)")
    _add_common(p)

    c = _command(sub, "compare", help="table and plot of several runs: config differences and results",
                       epilog="examples:\n  cifarlab compare runs/base runs/no-bn runs/no-residual\n"
                              "  cifarlab compare runs/sweep/* --csv results.csv --plot val_acc.png")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders; the first is the baseline for deltas")
    c.add_argument("--csv", metavar="OUT.csv", help="also write the table as CSV")
    c.add_argument("--plot", metavar="OUT.png", help="also plot the runs' validation accuracy per epoch (and the seed "
                   "report's own, when one report is behind every run)")
    _add_common(c)

    x = _command(sub, "export", help="export a trained run to ONNX, torch.export (.pt2) or TorchScript "
                                     "(checked against PyTorch)",
                       epilog="examples:\n  cifarlab export runs/mine               # runs/mine/model.onnx\n"
                              "  cifarlab export runs/mine --format pt2    # runs/mine/model.pt2: "
                              "torch.export.load(...).module()")
    x.add_argument("run_dir", metavar="RUN_DIR")
    x.add_argument("--format", choices=["onnx", "pt2", "torchscript"], default="onnx",
                   help="torchscript is deprecated in PyTorch: prefer pt2")
    x.add_argument("--out", metavar="FILE", help="where to write (default RUN_DIR/model.onnx, .pt2 or .pt)")
    x.add_argument("--checkpoint", type=_checkpoint_arg, default="best", help=CHECKPOINT_HELP)
    _add_common(x)

    def experiment_args(p, what, storage=True):
        p.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides shared by every {what}")
        p.add_argument("--recipe", help="named config to start from (cifarlab recipes)")
        p.add_argument("--config", metavar="FILE.yaml", help="YAML config applied after the recipe")
        p.add_argument("--data", metavar="SPEC", help="cifar10 | cifar100 | fashion-mnist | mnist | PATH")
        p.add_argument("--data-root", metavar="DIR", help="where named sets and the decode cache live")
        p.add_argument("--out", metavar="DIR", help="experiment folder (default runs/<kind>-<time>); rerun to continue")
        p.add_argument("--mlflow", nargs="?", const="local", metavar="URI",
                       help=f"track in MLflow: one parent run, a child per {what} (default store: mlflow.db beside --out)")
        if storage:  # tune has its own: the Optuna study's
            p.add_argument("--storage", metavar="URL",
                           help="database (sqlite:///F.db, postgresql://...) through which several processes given "
                                "the same command and --out split the runs between them")
        _add_common(p)

    sw = _command(sub, "sweep", help="train every combination of a grid, one run folder each",
                        epilog="examples:\n  cifarlab sweep --recipe seed004 --grid batch_size=64,256,1024 --grid epochs=10,30\n"
                               "  cifarlab sweep --recipe fast --data ./train --grid optim.name=adam,sgd,asgd epochs=5\n"
                               "writes DIR/<key=value,...>/ per run, DIR/results.csv and DIR/results.png; "
                               "rerunning skips finished runs")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="values of one key (repeatable)")
    experiment_args(sw, "run of the grid")

    ab = _command(sub, "ablate", help="baseline plus one-change-at-a-time runs, with each change's accuracy difference",
                        epilog="examples:\n  cifarlab ablate --recipe seed003 --toggle batch_norm --toggle residual\n"
                               "  cifarlab ablate --recipe seed003 --ladder --data cifar100 epochs=5\n"
                               "  cifarlab ablate --recipe fast --data ./train --toggle optim.nesterov --set label_smoothing=0\n"
                               "writes DIR/baseline/, DIR/<change>/, DIR/results.csv and DIR/results.png")
    ab.add_argument("--toggle", action="append", default=[], metavar="NAME",
                    help="flip a model switch (batch_norm, residual, ...) or a true/false config key")
    ab.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one other change to try")
    ab.add_argument("--ladder", action="store_true",
                    help="replay the recipe's report's ablation steps in its order, each on top of the last "
                         "(seed003: its 10 steps from the starter BaseNet), its accuracy beside each")
    experiment_args(ab, "run")

    tu = _command(sub, "tune", help="Optuna search (TPE, median pruning) over a YAML search space",
                        epilog="example:\n  cifarlab tune --recipe fast --data ./train --space space.yaml --trials 20\n"
                               "space.yaml:\n  optim.lr: {type: float, low: 0.01, high: 1.0, log: true}\n"
                               "  batch_size: {type: categorical, choices: [256, 512]}\n"
                               "  epochs: {type: int, low: 4, high: 12}\n"
                               "several processes/machines share one study with --storage postgresql://... --study NAME;\n"
                               "the best config is written to DIR/best.yaml: cifarlab train --config DIR/best.yaml")
    tu.add_argument("--space", required=True, metavar="SPACE.yaml", help="config keys and their ranges")
    tu.add_argument("--trials", type=int, default=20, help="trials for this process to run (default 20)")
    tu.add_argument("--storage", metavar="URL", help="Optuna RDB URL (default sqlite:///DIR/study.db)")
    tu.add_argument("--study", metavar="NAME", help="study name (default: the folder name)")
    tu.add_argument("--sampler-seed", type=int, default=0, help="TPE sampler seed")
    experiment_args(tu, "trial", storage=False)

    rp = _command(sub, "report", help="regenerate a run's plots and report.html",
                        epilog="example:\n  cifarlab report runs/mine   # then open runs/mine/report.html")
    rp.add_argument("run_dir", metavar="RUN_DIR")
    rp.add_argument("--device", default="auto")
    _add_common(rp)

    m = _command(sub, "models", help="list registered models", epilog="example:\n  cifarlab models")
    _add_common(m)
    r = _command(sub, "recipes", help="list named recipes, or show one setting by setting",
                 epilog="examples:\n  cifarlab recipes\n  cifarlab recipes seed004   # each setting: value, "
                        "and whether the report states it")
    r.add_argument("name", nargs="?", metavar="RECIPE", help="show this recipe's settings and where they come from")
    _add_common(r)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cifarlab")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- commands

def cmd_train(args) -> int:
    from .api import resume_run, train_run
    from .trainer import StoppedEarly
    from .config import describe_keys, parse_overrides, to_yaml
    from .progress import Reporter
    from .recipes import resolve_config

    if args.list_keys:
        for key, default, help_text in describe_keys():
            print(f"{key:32} {default:22} {help_text}")
        return 0
    overrides = parse_overrides(args.overrides)
    if args.data_root:
        overrides.setdefault("data", {})["root"] = args.data_root
    if args.tensorboard:
        overrides["tensorboard"] = True
    if args.mlflow:
        overrides["mlflow"] = args.mlflow
    # under torchrun only rank 0 speaks
    reporter = Reporter(quiet=args.quiet or os.environ.get("RANK", "0") != "0")
    if args.resume:
        if args.recipe or args.config or args.data or args.out:
            raise UserError("--resume continues a run exactly as configured; drop --recipe/--config/--data/--out")
        try:
            summary = resume_run(args.resume, overrides=overrides, reporter=reporter,
                                 stop_after_epochs=args.stop_after_epochs)
        except KeyboardInterrupt as err:
            raise _Interrupted(args.resume, err) from None
        except StoppedEarly as stop:
            return _stopped_early(stop, reporter)
    else:
        reasons: list[str] = []
        cfg = resolve_config(args.recipe, args.config, args.data, overrides, auto=True, reasons=reasons)
        if args.print_config:
            print("".join(f"# {cfg.recipe}: {r}\n" for r in reasons) + to_yaml(cfg), end="")
            return 0
        for r in reasons:
            reporter.info(f"{cfg.recipe}: {r}")
        from .runs import default_run_dir

        if not args.out and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("under torchrun pass --out RUN_DIR so that every process writes to the same run folder")
        run_dir = Path(args.out) if args.out else default_run_dir(args.recipe or cfg.model)
        try:
            summary = train_run(cfg, out=run_dir, reporter=reporter, stop_after_epochs=args.stop_after_epochs)
        except KeyboardInterrupt as err:
            raise _Interrupted(run_dir, err) from None
        except StoppedEarly as stop:
            return _stopped_early(stop, reporter)
    _print_next_steps(summary, reporter)
    return 0


def _stopped_early(stop, reporter) -> int:
    reporter.info(f"{stop}\nnext: cifarlab compare {stop.run_dir} --plot curves.png   (its curve so far)")
    return 0


class _Interrupted(Exception):
    def __init__(self, run_dir, cause=None):
        # a first Ctrl-C saves the epoch's progress (RunInterrupted says where); a second one stops at once
        saved = str(cause) if str(cause or "") else f"interrupted; finished epochs are saved in {run_dir}"
        super().__init__(f"{saved}: continue with `cifarlab train --resume {run_dir}`")


def _print_next_steps(summary, reporter) -> None:
    run = summary.run_dir
    if summary.best_val_acc is not None:
        reporter.info(f"done: best val_acc {summary.best_val_acc:.4f} (epoch {summary.best_epoch}), "
                      f"final {summary.final_val_acc:.4f}, {summary.train_seconds:.0f}s of training")
    else:
        reporter.info(f"done: final train_loss {summary.final_train_loss:.4f}, {summary.train_seconds:.0f}s of training")
    if summary.reported:  # a seed recipe: its report's number beside this run's
        from .recipes import reported_line

        reporter.info(reported_line(summary.as_dict()))
    reporter.info(f"run folder: {run}\nnext: open {run}/report.html, or cifarlab eval {run} --data PATH/TO/TEST_FOLDER")


def cmd_eval(args) -> int:
    from .inference import eval_file, evaluate_run

    log = (lambda *_: None) if args.quiet else print
    if args.calibration_images is not None and (args.bn_stats != "recalibrate" or args.calibration_images < 1):
        raise UserError("--calibration-images N (N >= 1) goes with --bn-stats recalibrate")
    result = evaluate_run(args.run_dir, args.data, args.checkpoint, args.device, log=log, int8=args.int8,
                          bn_stats=args.bn_stats, calibration_images=args.calibration_images)
    n = result.nonfinite
    overflow = f"  ({n:,} image{'' if n == 1 else 's'} with inf/nan logits)" if n else ""
    print(f"accuracy {result.accuracy:.4f}  loss {result.loss:.4f}  n {result.n}{overflow}  "
          f"(written to {eval_file(args.run_dir, args.int8, args.bn_stats, args.checkpoint)})")
    return 0


def cmd_predict(args) -> int:
    from .predict import format_lines, predict_run, write_csv

    if args.kaggle and not args.csv:
        raise UserError("--kaggle writes a CSV file; add --csv submission.csv")
    preds = predict_run(args.run_dir, args.inputs, topk=args.topk, checkpoint=args.checkpoint, device=args.device,
                        skip_bad=args.skip_bad_images, tta=args.tta, int8=args.int8,
                        log=(lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr)))
    if args.csv:
        write_csv(preds, args.csv, kaggle=args.kaggle)
        if not args.quiet:
            print(f"wrote {len(preds)} predictions to {args.csv}")
    else:
        print("\n".join(format_lines(preds)))
    return 0


def _experiment_resolver(args, recipe: str | None = None):
    from .config import merge, parse_overrides
    from .recipes import resolve_config

    recipe = recipe or args.recipe
    base = parse_overrides(args.overrides)
    if args.data_root:
        base.setdefault("data", {})["root"] = args.data_root
    if getattr(args, "mlflow", None):
        base["mlflow"] = args.mlflow
    if recipe is None and not args.config and "model" not in base:
        recipe = "auto"  # as `cifarlab train --data X`: every point starts from the settings the data calls for
    resolve_config(recipe, args.config, args.data, base)  # the shared part alone must be valid
    return lambda changes: resolve_config(recipe, args.config, args.data, merge(base, changes))


def _experiment_dir(args, kind: str) -> Path:
    from .runs import default_run_dir

    return Path(args.out) if args.out else default_run_dir(kind)


def _finish_experiment(args, out: Path, rows) -> None:
    from .compare import format_table

    columns = [c for c in rows[0] if c not in ("final_val_acc", "epochs")]
    print(format_table(columns, rows))
    if not args.quiet:
        print(f"results: {out / 'results.csv'} and {out / 'results.png'}; runs in {out}/\n"
              f"next: cifarlab compare {out}/*/ --plot curves.png   (rerun the same command to finish missing runs)")


def cmd_sweep(args) -> int:
    from .experiments import grid_points, parse_grid, run_points
    from .progress import Reporter

    grid = parse_grid(args.grid)
    resolve = _experiment_resolver(args)
    out = _experiment_dir(args, "sweep")
    points = grid_points(grid)
    desc = {"recipe": args.recipe, "config": args.config, "data": args.data, "overrides": args.overrides,
            "grid": {k: v for k, v in grid.items()}}
    rows = run_points("sweep", points, resolve, out, desc, Reporter(quiet=args.quiet), storage=args.storage)
    _finish_experiment(args, out, rows)
    return 0


def cmd_ablate(args) -> int:
    from .experiments import ablation_points, run_points
    from .progress import Reporter

    if args.ladder:
        from .experiments import ladder_points
        from .recipes import RECIPES, get_recipe

        if args.toggle or args.set:
            raise UserError("--ladder replays the report's own steps; drop --toggle/--set (or drop --ladder)")
        recipe = get_recipe(args.recipe) if args.recipe else None
        if recipe is None or not recipe.ladder:
            with_ladder = ", ".join(n for n, r in RECIPES.items() if r.ladder)
            raise UserError(f"--ladder needs a recipe with a report's ablation steps: --recipe {with_ladder}")
        resolve = _experiment_resolver(args, recipe.ladder_base)
        points = ladder_points(recipe)
    else:
        resolve = _experiment_resolver(args)
        points = ablation_points(resolve({}), args.toggle, args.set)
    out = _experiment_dir(args, "ablate")
    desc = {"recipe": args.recipe, "config": args.config, "data": args.data, "overrides": args.overrides,
            **({"ladder": True} if args.ladder else {})}
    rows = run_points("ablate", points, resolve, out, desc, Reporter(quiet=args.quiet), storage=args.storage)
    _finish_experiment(args, out, rows)
    return 0


def cmd_tune(args) -> int:
    from .progress import Reporter
    from .tune import run_tune, trials_table

    resolve = _experiment_resolver(args)
    out = _experiment_dir(args, "tune")
    study, best = run_tune(resolve, args.space, args.trials, out, args.storage, args.study, args.sampler_seed,
                           Reporter(quiet=args.quiet))
    print(trials_table(study))
    if best and not args.quiet:
        print(f"best: trial {study.best_trial.number} value {study.best_value:.4f}; config in {best}\n"
              f"next: cifarlab train --config {best}")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare_runs

    table, _ = compare_runs(args.run_dirs, csv_path=args.csv, plot_path=args.plot)
    print(table)
    if not args.quiet:
        for what, path in (("table", args.csv), ("plot", args.plot)):
            if path:
                print(f"wrote {what} to {path}")
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    info = export_run(args.run_dir, args.format, args.out, args.checkpoint)
    if not args.quiet:
        shape = "x".join(map(str, info["input"]["shape"]))
        print(f"wrote {info['path']} (input images {shape} float32 in [0, 1], normalisation built in; "
              f"max |logit difference| vs PyTorch {info['max_abs_diff']:.1e}) and {info['path']}.json")
    return 0


def cmd_track(args) -> int:
    from .tracking import track_run

    track_run(args.run_dir, args.mlflow, say=print if not args.quiet else (lambda *_: None))
    return 0


def cmd_report(args) -> int:
    from .report import report_run

    path = report_run(args.run_dir, args.device)
    if not args.quiet:
        print(f"wrote {path} (and curves.png, confusion.png, per_class.csv, predictions.png, mistakes.png)")
    return 0


def cmd_models(args) -> int:
    from .models.registry import list_models, model_options, model_summary

    for name in list_models():
        opts = ", ".join(f"{k}={v!r}" for k, v in model_options(name).items())
        print(f"{name:20} {model_summary(name)}  [model_args: {opts or '-'}]")
    return 0


def cmd_recipes(args) -> int:
    from .recipes import RECIPES, provenance_table

    if args.name:
        print(provenance_table(args.name))
        return 0
    for recipe in RECIPES.values():
        print(f"{recipe.name:20} {recipe.description}")
    print("\nnext: cifarlab recipes NAME   (its settings and their sources)")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "report": cmd_report,
            "compare": cmd_compare, "export": cmd_export, "sweep": cmd_sweep, "ablate": cmd_ablate,
            "tune": cmd_tune, "track": cmd_track,
            "models": cmd_models, "recipes": cmd_recipes}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options: collect the strays argparse leaves
    args, extra = parser.parse_known_args(argv)
    takes_overrides = args.command in ("train", "sweep", "ablate", "tune")
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not takes_overrides]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if not args.command:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        if args.debug:
            raise
        print(f"cifarlab: error: {err}", file=sys.stderr)
        return 2
    except _Interrupted as err:
        print(f"cifarlab: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("cifarlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `cifarlab recipes seed000 | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
