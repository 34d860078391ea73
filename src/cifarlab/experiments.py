"""Many runs as one experiment: grid sweeps and one-change-at-a-time ablations.

Owns turning a grid or a list of toggles into named points, running each point in its
own run folder under one experiment folder (finished points are skipped and interrupted
ones resumed when the command is run again), and the experiment's results.csv and plot.
Every point's config is validated before the first one trains. Never trains by itself:
each point is an ordinary `cifarlab train` run.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .config import Config, describe_keys, dotted_to_nested, format_value, parse_override, to_yaml, typed_value
from .errors import UserError
from .progress import Reporter
from .runs import RunDir, write_csv


@dataclass
class Point:
    name: str  # folder name inside the experiment folder
    overrides: dict  # nested config overrides of this point
    changes: dict  # dotted key -> value, what this point sets (for tables and plots)
    reported: float | None = None  # a report's accuracy for this point (a step of its ablation ladder)


# ---------------------------------------------------------------- grids

def _split_values(text: str) -> list[str]:
    """Split on commas that are not inside [...] or {...}: `a,b`, `[1,2],[3,4]`."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def _leaf(nested: dict, key: str):
    v = nested
    for part in key.split("."):
        v = v[part]
    return v


def parse_grid(items: list[str]) -> dict[str, list]:
    """['batch_size=64,128', 'optim.name=adam,sgd'] -> {'batch_size': [64, 128], 'optim.name': ['adam', 'sgd']}."""
    if not items:
        raise UserError("give at least one --grid key=v1,v2,... (e.g. --grid batch_size=64,128,256)")
    grid: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--grid takes key=v1,v2,...; got '{item}'")
        key, _, values = item.partition("=")
        key = key.strip()
        if key in grid:
            raise UserError(f"--grid key '{key}' given twice; list all its values in one --grid")
        raw = [v for v in _split_values(values) if v != ""]
        if not raw:
            raise UserError(f"--grid {key}= lists no values")
        grid[key] = [typed_value(key, parse_override(f"{key}={v}")[1]) for v in raw]
        if len({json.dumps(v, sort_keys=True) for v in grid[key]}) != len(grid[key]):
            raise UserError(f"--grid {key} repeats a value")
    return grid


def point_name(changes: dict) -> str:
    text = ",".join(f"{k}={format_value(v)}" for k, v in changes.items()) or "baseline"
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)[:200]


def grid_points(grid: dict[str, list]) -> list[Point]:
    keys = list(grid)
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        changes = dict(zip(keys, values))
        points.append(Point(point_name(changes), dotted_to_nested(changes), changes))
    return points


# ---------------------------------------------------------------- ablations

def ablation_points(cfg: Config, toggles: list[str], sets: list[str]) -> list[Point]:
    """The baseline, then one point per toggle (a boolean flipped) and per `key=value` change."""
    from .models.registry import model_options

    config_keys = {k for k, _, _ in describe_keys()}
    config_bools = {k for k, default, _ in describe_keys() if default in ("True", "False")}
    flat = cfg.to_dict()
    points = [Point("baseline", {}, {})]
    for name in toggles:
        if name in config_keys:
            key, current = name, _leaf(flat, name)
        else:
            key = name if name.startswith("model_args.") else f"model_args.{name}"
            option = key[len("model_args."):]
            options = {**model_options(cfg.model), **cfg.model_args}
            if option not in options:
                known = sorted(k for k, v in options.items() if isinstance(v, bool)) + sorted(config_bools)
                raise UserError(f"--toggle {name}: not a switch of model '{cfg.model}' or a boolean config key; "
                                f"switches: {', '.join(known)}")
            current = options[option]
        if not isinstance(current, bool):
            raise UserError(f"--toggle {name}: '{key}' is {current!r}, not true/false; use --set {key}=VALUE")
        changes = {key: not current}
        points.append(Point(point_name(changes), dotted_to_nested(changes), changes))
    for item in sets:
        key, value = parse_override(item)
        changes = {key: typed_value(key, value)}
        points.append(Point(point_name(changes), dotted_to_nested(changes), changes))
    if len(points) == 1:
        raise UserError("give at least one --toggle NAME or --set key=value to compare against the baseline")
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise UserError("two changes give the same run; list each change once")
    return points


def ladder_points(recipe) -> list[Point]:
    """A report's ablation study in its own order: each step keeps every change before it (cumulative),
    unlike --toggle, which changes one thing at a time from the baseline."""
    from .recipes import ladder_configs

    return [Point(name, dotted_to_nested(total), own, reported) for name, total, own, reported in ladder_configs(recipe)]


# ---------------------------------------------------------------- running

def _check_same_experiment(folder: Path, description: dict) -> None:
    import yaml

    from .runs import atomic_write_text

    meta = folder / "experiment.yaml"
    if meta.is_file():
        before = yaml.safe_load(meta.read_text())
        if before != json.loads(json.dumps(description)):
            raise UserError(f"{folder} holds a different experiment ({meta}); use another --out, "
                            "or the same command to continue it")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(meta, yaml.safe_dump(json.loads(json.dumps(description)), sort_keys=False))


def experiment_key(kind: str, out_dir: Path, points: list[Point]) -> str:
    """The name workers sharing --storage know an experiment by: its folder's name and its points (paths
    to the shared folder may differ between machines)."""
    import hashlib

    digest = hashlib.sha1(json.dumps([kind, [p.name for p in points]]).encode()).hexdigest()[:12]
    return f"{out_dir.resolve().name}-{digest}"


def run_points(kind: str, points: list[Point], resolve, out: str | Path, description: dict,
               reporter: Reporter | None = None, storage: str | None = None) -> list[dict]:
    """Train every point not yet finished; returns the comparison rows (also written to results.csv).

    `resolve(overrides) -> Config` builds a point's config; all are resolved before any trains.
    With `storage` (a database URL), several processes given the same command and folder split the
    points between them (claims.py): each point is trained by one of them, a dead worker's point is
    taken over, and any of them can be rerun to finish what is left.
    """
    out_dir = Path(out)
    say = reporter or Reporter()
    from .models.registry import check_model

    configs = [resolve(p.overrides) for p in points]  # a bad value fails now, not after hours
    for cfg in configs:
        check_model(cfg.model, cfg.model_args)
    _check_same_experiment(out_dir, {"kind": kind, **description, "points": [p.name for p in points]})
    claims = None
    if storage:
        from .claims import PointClaims

        claims = PointClaims(storage, experiment_key(kind, out_dir, points))
    from .tracking import experiment_run

    with experiment_run(out_dir, configs[0].mlflow if configs else "", {"kind": kind, "points": len(points)},
                        say=say.info):
        return _train_points(kind, points, configs, out_dir, say, claims)


def _train_points(kind: str, points: list[Point], configs: list[Config], out_dir: Path, say: Reporter,
                  claims) -> list[dict]:
    from .api import resume_run, train_run
    from .trainer import TrainingDiverged

    failed: dict[str, str] = {}
    rows = None
    for i, (point, cfg) in enumerate(zip(points, configs), 1):
        run_dir = out_dir / point.name
        label = f"{kind} {i}/{len(points)} {point.name}"
        run = RunDir(run_dir)
        if run.finished:
            say.info(f"{label}: finished earlier, skipped")
            continue
        if claims is not None and (held := claims.claim(point.name)) is not None:
            say.info(f"{label}: {held}, skipped")
            continue
        beat = (lambda row, name=point.name: claims.beat(name)) if claims is not None else None
        inner = Reporter(quiet=True) if say.quiet else Reporter(quiet=False, stream=say.stream)
        try:
            if run.config_file.is_file():
                if run.config_file.read_text() != to_yaml(cfg):
                    raise UserError(f"{run_dir} was started with another config; delete it or use another --out")
                say.info(f"{label}: resuming {run_dir}")
                resume_run(run_dir, reporter=inner, on_epoch=beat)
            else:
                say.info(f"{label}: training into {run_dir}")
                train_run(cfg, out=run_dir, reporter=inner, on_epoch=beat)
        except TrainingDiverged as err:  # a diverging lr is a result of the sweep, not the end of it
            failed[point.name] = str(err)
            say.info(f"{label}: diverged ({err})")
        except BaseException:
            if claims is not None:
                claims.release(point.name)  # interrupted or failed here: the next worker may take it
            raise
        if claims is not None:
            claims.finish(point.name)
        rows = write_results(out_dir, points, failed, by_run=kind == "ablate")  # progress after every point
    # when every point had finished earlier the loop wrote nothing: the tables still reflect the folder
    return rows if rows is not None else write_results(out_dir, points, failed, by_run=kind == "ablate")


def write_results(out_dir: Path, points: list[Point], failed: dict[str, str] | None = None,
                  by_run: bool = False) -> list[dict]:
    """results.csv (changed keys, results, accuracy difference against the first point) and results.png
    (accuracy against each swept key; by_run: one bar per run, as an ablation reads)."""
    from .compare import RESULT_COLUMNS, read_run
    from .plots import plot_results

    failed = failed or {}
    keys = list(dict.fromkeys(k for p in points for k in p.changes))
    rows, records = [], []
    base = None
    for i, p in enumerate(points):
        run_dir = out_dir / p.name
        record = read_run(run_dir) if RunDir(run_dir).config_file.is_file() else None
        row = {"run": p.name, **{k: p.changes.get(k, "(baseline)" if not p.changes else "") for k in keys}}
        status = ("diverged" if p.name in failed else record.status if record else "not started")
        row["status"] = status
        row.update({k: (record.result(k) if record else None) for k in RESULT_COLUMNS})
        head = record.headline if record and record.summary else None
        row["accuracy"] = head
        if i == 0:
            base = head
        row["delta_vs_first"] = round(head - base, 6) if head is not None and base is not None else None
        rows.append(row)
        if record:
            records.append((p, record))
    reported = ["reported"] if any(p.reported is not None for p in points) else []
    for row, p in zip(rows, points):
        if reported:
            row["reported"] = p.reported
    columns = ["run", *keys, "status", "accuracy", *reported, "delta_vs_first", *RESULT_COLUMNS]
    write_csv(out_dir / "results.csv", columns, rows)
    plot_results(rows, ["run"] if by_run else keys, out_dir / "results.png")
    return rows
