"""Hyperparameter search with Optuna: TPE sampling, median pruning on per-epoch validation accuracy.

Owns the search-space file format, one trial = one ordinary run folder, the shared study
(a local SQLite file by default; any RDB URL lets several `cifarlab tune` processes on one or
many machines work on one study), and best.yaml, which `cifarlab train --config` accepts.
Never defines training: a trial is `train_run` with the sampled keys.

space.yaml:
    optim.lr: {type: float, low: 0.01, high: 1.0, log: true}
    batch_size: {type: categorical, choices: [128, 256, 512]}
    epochs: {type: int, low: 4, high: 12, step: 2}
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .progress import Reporter

TYPES = ("float", "int", "categorical")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("`cifarlab tune` needs Optuna: pip install 'cifarlab[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def load_space(path: str | Path) -> dict[str, dict]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"search space file not found: {p}; see `cifarlab tune --help` for its format")
    try:
        space = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{p} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(space, dict) or not space:
        raise UserError(f"{p} must map config keys to ranges, e.g. 'optim.lr: {{type: float, low: 0.01, high: 1, log: true}}'")
    for key, spec in space.items():
        where = f"{p}: '{key}'"
        if not isinstance(spec, dict) or spec.get("type") not in TYPES:
            raise UserError(f"{where} needs type: {' | '.join(TYPES)}")
        if spec["type"] == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise UserError(f"{where} (categorical) needs a non-empty list 'choices'")
        else:
            if "low" not in spec or "high" not in spec:
                raise UserError(f"{where} ({spec['type']}) needs low and high")
            try:
                low, high = float(spec["low"]), float(spec["high"])
            except (TypeError, ValueError):
                raise UserError(f"{where}: low and high must be numbers") from None
            if not low < high:
                raise UserError(f"{where}: low must be below high")
            if spec.get("log") and low <= 0:
                raise UserError(f"{where}: log scale needs low > 0")
    return space


def suggest(trial, space: dict[str, dict]) -> dict:
    out = {}
    for key, spec in space.items():
        if spec["type"] == "float":
            out[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")),
                                           step=spec.get("step"))
        elif spec["type"] == "int":
            out[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")),
                                         step=int(spec.get("step", 1)))
        else:
            out[key] = trial.suggest_categorical(key, spec["choices"])
    return out


def _extremes(space: dict[str, dict]) -> list[dict]:
    """The low and high corners of the space: resolved up front so a bad key or range fails before trial 0."""
    def pick(spec, end):
        if spec["type"] == "categorical":
            return spec["choices"][0 if end == "low" else -1]
        return (int if spec["type"] == "int" else float)(spec[end])
    return [{k: pick(s, end) for k, s in space.items()} for end in ("low", "high")]


def run_tune(resolve, space_path: str | Path, trials: int, out: str | Path, storage: str | None = None,
             study_name: str | None = None, seed: int = 0, reporter: Reporter | None = None):
    """Run `trials` more trials of the study; returns (study, path of best.yaml or None).

    `resolve(changes: dict of dotted keys) -> Config`.
    """
    from .api import train_run
    from .config import dotted_to_nested
    from .trainer import TrainingDiverged

    optuna = _optuna()
    say = reporter or Reporter()
    space = load_space(space_path)
    for corner in _extremes(space):
        resolve(dotted_to_nested(corner))
    if trials < 1:
        raise UserError("--trials must be at least 1")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    name = study_name or out_dir.resolve().name
    from .claims import retry_schema_race

    try:
        study = retry_schema_race(lambda: optuna.create_study(
            study_name=name, storage=storage, load_if_exists=True, direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)))
    except Exception as err:  # noqa: BLE001 - bad URL, unreachable database, missing driver
        hint = ""
        if storage.startswith("postgresql") and (isinstance(err, ImportError) or "DB access module" in str(err)):
            hint = "; for PostgreSQL: pip install cifarlab[postgres]"
        raise UserError(f"cannot open study storage {storage} ({str(err).splitlines()[0][:160]}){hint}") from None

    def objective(trial):
        changes = suggest(trial, space)
        cfg = resolve(dotted_to_nested(changes))
        run_dir = out_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("config", json.dumps(cfg.to_dict()))
        say.info(f"trial {trial.number}: {', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in changes.items())}"
                 f" -> {run_dir}")

        def on_epoch(row):
            if row.get("val_acc") is None:
                raise UserError("tuning needs a validation split; keep data.val_fraction > 0")
            trial.report(row["val_acc"], row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {row['epoch']} (val_acc {row['val_acc']:.4f})")

        summary = train_run(cfg, out=run_dir, reporter=Reporter(quiet=True), on_epoch=on_epoch)
        value = summary.final_val_acc_tta if summary.final_val_acc_tta is not None else summary.best_val_acc
        say.info(f"trial {trial.number}: {value:.4f}")
        return value

    def keep_best(study, trial):
        # any process of a shared study can write best.yaml: the config travels in the trial's attributes
        try:
            if study.best_trial.number == trial.number:
                write_best(study, out_dir / "best.yaml")
        except ValueError:  # no finished trial yet
            pass

    from .tracking import experiment_run

    setting = resolve({}).mlflow
    with experiment_run(out_dir, setting, {"kind": "tune", "study": name}, say=say.info):
        study.optimize(objective, n_trials=trials, catch=(TrainingDiverged,), callbacks=[keep_best])
    best_file = out_dir / "best.yaml"
    return study, (best_file if write_best(study, best_file) else None)


def write_best(study, path: Path) -> bool:
    """best.yaml from the study's best trial, whichever process ran it; False when none finished."""
    from .config import from_dict, to_yaml
    from .runs import atomic_write_text

    try:
        best = study.best_trial
    except ValueError:
        return False
    atomic_write_text(path, to_yaml(from_dict(json.loads(best.user_attrs["config"]))))
    return True


def trials_table(study) -> str:
    lines = [f"{'trial':>5}  {'state':<9} {'value':>7}  {'epochs':>6}  params"]
    for t in study.trials:
        value = f"{t.value:.4f}" if t.value is not None else "-"
        epochs = max(t.intermediate_values) if t.intermediate_values else 0
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        lines.append(f"{t.number:>5}  {t.state.name:<9} {value:>7}  {epochs:>6}  {params}")
    return "\n".join(lines)
