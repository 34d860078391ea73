"""Sweeps, ablations and Optuna tuning through the real CLI on tiny data."""

import csv
import json
import os

import pytest
import yaml

from cifarlab.cli import main
from cifarlab.errors import UserError
from cifarlab.experiments import grid_points, parse_grid

TINY = ["model=fastnet", "model_args={widths: [8, 16, 16]}", "batch_size=32", "eval_batch_size=64", "threads=1",
        "data.val_fraction=0.25", "--quiet"]


def results(folder):
    return list(csv.DictReader((folder / "results.csv").open()))


# ------------------------------------------------------------------ grids

def test_grid_values_are_typed_and_lists_keep_their_commas():
    grid = parse_grid(["batch_size=64,128", "optim.name=adam,sgd", "data.mean=[0.5,0.4,0.3],[0.1]",
                       "optim.lr=1e-3,0.1"])
    assert grid == {"batch_size": [64, 128], "optim.name": ["adam", "sgd"],
                    "data.mean": [[0.5, 0.4, 0.3], [0.1]], "optim.lr": [0.001, 0.1]}
    points = grid_points(grid)
    assert len(points) == 16 and len({p.name for p in points}) == 16
    assert points[0].overrides == {"batch_size": 64, "optim": {"name": "adam", "lr": 0.001}, "data": {"mean": [0.5, 0.4, 0.3]}}


@pytest.mark.parametrize("items, message", [
    ([], "at least one --grid"), (["batch_size"], "key=v1,v2"), (["epochs=1", "epochs=2"], "given twice"),
    (["epochs="], "no values"), (["epochs=2,2"], "repeats"),
])
def test_bad_grids_are_one_line(items, message):
    with pytest.raises(UserError, match=message):
        parse_grid(items)


def test_a_bad_grid_value_fails_before_anything_trains(easy_folder, tmp_path, capsys):
    out = tmp_path / "sw"
    code = main(["sweep", "--data", str(easy_folder / "train"), "--out", str(out), "--grid", "epochs=1,0", *TINY])
    assert code == 2 and "epochs" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------ sweep

def test_sweep_trains_the_grid_writes_results_and_skips_finished_runs(easy_folder, tmp_path, capsys):
    out = tmp_path / "sw"
    where = ["sweep", "--data", str(easy_folder / "train"), "--data-root", str(tmp_path / "cache"), "--out", str(out)]
    args = [*where, "--grid", "optim.lr=0.05,0.01", "--grid", "epochs=1,2", *TINY]
    assert main(args) == 0
    rows = results(out)
    assert [(float(r["optim.lr"]), int(r["epochs"])) for r in rows] == [(0.05, 1), (0.05, 2), (0.01, 1), (0.01, 2)]
    for r in rows:
        summary = json.loads((out / r["run"] / "summary.json").read_text())
        assert r["status"] == "finished" and float(r["best_val_acc"]) == pytest.approx(summary["best_val_acc"])
        cfg = yaml.safe_load((out / r["run"] / "config.yaml").read_text())
        assert cfg["optim"]["lr"] == float(r["optim.lr"]) and cfg["epochs"] == int(r["epochs"])
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    # a lost run is retrained on the next call; the finished ones are left untouched
    import shutil

    stamps = {r["run"]: (out / r["run"] / "summary.json").stat().st_mtime_ns for r in rows}
    shutil.rmtree(out / rows[1]["run"])
    capsys.readouterr()
    assert main(args[:-1]) == 0  # not quiet: it says what it skips
    said = capsys.readouterr().out
    assert said.count("finished earlier, skipped") == 3 and "training into" in said
    for r in rows:
        if r["run"] != rows[1]["run"]:
            assert (out / r["run"] / "summary.json").stat().st_mtime_ns == stamps[r["run"]]
    assert [r["status"] for r in results(out)] == ["finished"] * 4
    # the same folder with another grid is refused
    assert main([*where, "--grid", "epochs=3", *TINY]) == 2
    assert "different experiment" in capsys.readouterr().err


# ------------------------------------------------------------------ ablate

def test_ablate_runs_baseline_and_each_change_with_deltas(easy_folder, tmp_path, capsys):
    out = tmp_path / "ab"
    assert main(["ablate", "--data", str(easy_folder / "train"), "--out", str(out), "--toggle", "batch_norm",
                 "--toggle", "residual", "--set", "label_smoothing=0", "model=basenet",
                 "model_args={widths: [8, 8, 16, 16], depths: [1, 1, 1, 1], pool_size: 4}", "epochs=1",
                 "batch_size=32", "threads=1", "data.val_fraction=0.25", "data.image_size=16"]) == 0
    table = capsys.readouterr().out
    rows = results(out)
    assert [r["run"] for r in rows] == ["baseline", "model_args.batch_norm=False", "model_args.residual=False",
                                        "label_smoothing=0"]
    for r in rows:
        cfg = yaml.safe_load((out / r["run"] / "config.yaml").read_text())
        s = json.loads((out / r["run"] / "summary.json").read_text())
        assert cfg["model_args"].get("batch_norm", True) is (r["run"] != "model_args.batch_norm=False")
        assert cfg["model_args"].get("residual", True) is (r["run"] != "model_args.residual=False")
        head = s["final_val_acc_tta"] if s["final_val_acc_tta"] is not None else s["best_val_acc"]
        assert float(r["accuracy"]) == pytest.approx(head)
    base = float(rows[0]["accuracy"])
    assert [float(r["delta_vs_first"]) for r in rows] == pytest.approx([float(r["accuracy"]) - base for r in rows])
    assert "delta_vs_first" in table and "model_args.batch_norm=False" in table


def test_ablate_names_the_switches_it_knows(easy_folder, tmp_path, capsys):
    assert main(["ablate", "--data", str(easy_folder / "train"), "--out", str(tmp_path / "ab"), "--toggle", "nonsense",
                 *TINY]) == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and "channels_last" in err
    assert main(["ablate", "--data", str(easy_folder / "train"), "--out", str(tmp_path / "ab"), "--toggle",
                 "optim.lr", *TINY]) == 2
    assert "not true/false" in capsys.readouterr().err


# ------------------------------------------------------------------ tune

SPACE = {"optim.lr": {"type": "float", "low": 0.005, "high": 0.2, "log": True},
         "epochs": {"type": "int", "low": 1, "high": 2},
         "label_smoothing": {"type": "categorical", "choices": [0.0, 0.2]}}


def test_tune_shares_a_study_and_writes_a_best_config_train_accepts(easy_folder, tmp_path, capsys):
    optuna = pytest.importorskip("optuna")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    common = ["tune", "--data", str(easy_folder / "train"), "--data-root", str(tmp_path / "cache"),
              "--space", str(space), "--trials", "2", "--storage", storage, "--study", "s1", *TINY]
    # two "workers" (here one after the other) with their own folders share one study through the URL
    assert main([*common, "--out", str(tmp_path / "w1")]) == 0
    assert main([*common, "--out", str(tmp_path / "w2"), "--sampler-seed", "1"]) == 0
    study = optuna.load_study(study_name="s1", storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(study.trials) == 4 and [t.number for t in study.trials] == [0, 1, 2, 3]
    for t in done:  # each trial reported its validation accuracy after every epoch
        run = t.user_attrs["run_dir"]
        rows = [json.loads(x) for x in open(f"{run}/metrics.jsonl").read().splitlines()]
        assert t.intermediate_values == {r["epoch"]: pytest.approx(r["val_acc"]) for r in rows}
        assert 0.005 <= t.params["optim.lr"] <= 0.2 and t.params["epochs"] in (1, 2)
    best = yaml.safe_load((tmp_path / "w2" / "best.yaml").read_text())
    assert best["optim"]["lr"] == pytest.approx(study.best_trial.params["optim.lr"])
    assert best["epochs"] == study.best_trial.params["epochs"]
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "w2" / "best.yaml"), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == best


@pytest.mark.parametrize("space, message", [
    ({"optim.lr": {"type": "float", "low": 1, "high": 0.1}}, "low must be below high"),
    ({"optim.lr": {"type": "uniform"}}, "needs type"),
    ({"optim.nonsense": {"type": "float", "low": 0.1, "high": 1}}, "nonsense"),
    ({"epochs": {"type": "int", "low": -3, "high": 2}}, "epochs"),
])
def test_bad_search_spaces_fail_before_any_trial(easy_folder, tmp_path, capsys, space, message):
    pytest.importorskip("optuna")
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    assert main(["tune", "--data", str(easy_folder / "train"), "--space", str(path), "--out", str(tmp_path / "t"),
                 *TINY]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t" / "study.db").exists()


def test_a_run_stopped_by_its_epoch_callback_keeps_that_epoch(easy_folder, tmp_path):
    """What pruning relies on: raising in on_epoch stops the run with the epoch's checkpoint on disk."""
    from cifarlab.api import train_run
    from cifarlab.config import parse_overrides
    from cifarlab.recipes import resolve_config
    from cifarlab.runs import load_checkpoint

    class Stop(Exception):
        pass

    def stop_at_2(row):
        if row["epoch"] == 2:
            raise Stop

    cfg = resolve_config(None, None, str(easy_folder / "train"),
                         parse_overrides([t for t in TINY if t != "--quiet"] + ["epochs=4"]))
    with pytest.raises(Stop):
        train_run(cfg, out=tmp_path / "r", on_epoch=stop_at_2)
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["epoch"] == 2
    assert not (tmp_path / "r" / ".lock").exists()


def test_two_tune_processes_share_one_study_in_postgresql(easy_folder, tmp_path, postgres_url):
    """Two `cifarlab tune` workers at once against a real PostgreSQL server: one study, every trial number
    exactly once, each trial's reports its own run's epochs, and best.yaml is the study's best."""
    import subprocess
    import sys

    optuna = pytest.importorskip("optuna")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    common = ["tune", "--data", str(easy_folder / "train"), "--data-root", str(tmp_path / "cache"),
              "--space", str(space), "--trials", "3", "--storage", postgres_url, "--study", "pg", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "cifarlab", *common, "--out", str(tmp_path / f"w{i}"),
                                 "--sampler-seed", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for i in range(2)]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[-2000:] for o in outputs]
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    runs = [t.user_attrs["run_dir"] for t in study.trials]
    assert len(set(runs)) == 6  # no trial trained twice, each in its own folder
    assert {os.path.basename(os.path.dirname(r)) for r in runs} == {"w0", "w1"}  # both workers took trials
    for t in study.trials:
        rows = [json.loads(x) for x in open(f"{t.user_attrs['run_dir']}/metrics.jsonl").read().splitlines()]
        assert t.intermediate_values == {r["epoch"]: pytest.approx(r["val_acc"]) for r in rows}
    # the worker that finished last saw every trial: its best.yaml is the study's best
    last = max(range(2), key=lambda i: (tmp_path / f"w{i}" / "best.yaml").stat().st_mtime)
    best = yaml.safe_load((tmp_path / f"w{last}" / "best.yaml").read_text())
    assert best["optim"]["lr"] == pytest.approx(study.best_trial.params["optim.lr"])


# ------------------------------------------------------------------ several workers, one experiment

def test_point_claims_one_owner_and_takeover_of_a_dead_workers_point(tmp_path):
    from cifarlab.claims import PointClaims

    url = f"sqlite:///{tmp_path / 'claims.db'}"
    a, b = PointClaims(url, "exp"), PointClaims(url, "exp")
    b.pid = a.pid + 1_000_000  # another worker on this host (no such process: dead)
    assert a.claim("p1") is None and a.claim("p1") is None  # the owner may ask again
    assert b.claim("p1").startswith("being trained by")  # a is alive
    assert b.claim("p2") is None
    assert a.claim("p2") is None  # b's process does not exist: its point is taken over
    assert b.claim("p3") is None
    b.finish("p3")
    assert a.claim("p3") == "done"
    a.release("p2")
    assert b.claim("p2") is None  # given back: free again
    assert PointClaims(url, "other-exp").claim("p1") is None  # experiments are apart


SWEEP = ["--grid", "optim.lr=0.01,0.02,0.04,0.08", "epochs=1"]


def _sweep(easy_folder, tmp_path, storage, *extra):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "cifarlab", "sweep", "--data", str(easy_folder / "train"), "--data-root",
           str(tmp_path / "cache"), "--out", str(tmp_path / "grid"), "--storage", storage, *SWEEP,
           *[a for a in TINY if a != "--quiet"], *extra]  # not quiet: the tests read which points each trained
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _trained_by(output: str) -> set[str]:
    return {line.split(": training into")[0].split()[-1] for line in output.splitlines() if ": training into" in line}


def test_two_sweep_workers_split_a_grid_through_postgresql(easy_folder, tmp_path, postgres_url):
    workers = [_sweep(easy_folder, tmp_path, postgres_url) for _ in range(2)]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[-2000:] for o in outputs]
    mine = [_trained_by(o) for o in outputs]
    assert not mine[0] & mine[1], "a point was trained twice"
    assert len(mine[0] | mine[1]) == 4
    for point in mine[0] | mine[1]:
        rows = (tmp_path / "grid" / point / "metrics.jsonl").read_text().splitlines()
        assert len(rows) == 1 and (tmp_path / "grid" / point / "summary.json").is_file()
    import csv as _csv

    # each worker rewrites the table after its own points; a rerun by either shows them all finished
    rerun = _sweep(easy_folder, tmp_path, postgres_url)
    out = rerun.communicate(timeout=200)[0]
    assert rerun.returncode == 0 and not _trained_by(out), out[-1500:]
    with open(tmp_path / "grid" / "results.csv") as f:
        statuses = [r["status"] for r in _csv.DictReader(f)]
    assert statuses == ["finished"] * 4


def test_a_rerun_finishes_what_a_killed_sweep_worker_left(easy_folder, tmp_path):
    """A worker killed mid-point leaves its claim behind; the same command run again takes the point over
    (its process is gone), resumes it from its checkpoint and trains the rest."""
    import csv as _csv
    import time

    storage = f"sqlite:///{tmp_path / 'claims.db'}"
    first = _sweep(easy_folder, tmp_path, storage, "epochs=6")
    deadline = time.monotonic() + 180
    grid = tmp_path / "grid"
    while time.monotonic() < deadline and not any(grid.glob("*/metrics.jsonl")):
        time.sleep(0.05)
    first.kill()
    first.communicate(timeout=60)
    started = [p.parent.name for p in grid.glob("*/metrics.jsonl")]
    assert len(started) == 1 and not (grid / started[0] / "summary.json").is_file()

    rerun = _sweep(easy_folder, tmp_path, storage, "epochs=6")
    out = rerun.communicate(timeout=400)[0]
    assert rerun.returncode == 0, out[-2000:]
    assert f"{started[0]}: resuming" in out and started[0] not in _trained_by(out)
    assert len(_trained_by(out)) == 3
    assert len((grid / started[0] / "metrics.jsonl").read_text().splitlines()) == 6
    with open(grid / "results.csv") as f:
        assert [r["status"] for r in _csv.DictReader(f)] == ["finished"] * 4


def test_workers_opening_a_fresh_postgresql_study_and_claims_table_at_once_all_succeed(postgres_url):
    """The schema race CI once lost: on an empty database, workers that create Optuna's tables or the claims
    table at the same moment collide in PostgreSQL's catalogue; each must retry, none may fail."""
    import subprocess
    import sys

    script = ("import sys, optuna; from cifarlab.claims import PointClaims, retry_schema_race; "
              "optuna.logging.set_verbosity(optuna.logging.ERROR); "
              "retry_schema_race(lambda: optuna.create_study(study_name='race', storage=sys.argv[1], "
              "load_if_exists=True)); PointClaims(sys.argv[1], 'race')")
    procs = [subprocess.Popen([sys.executable, "-c", script, postgres_url], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(6)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [o[-800:] for o in outputs if o]
