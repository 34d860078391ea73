"""MLflow tracking, read back with MLflow's own client: params, per-epoch metrics, tags, artifacts; resume
continues the MLflow run; a tracking server that is down costs nothing and `cifarlab track` uploads later;
a real `mlflow server` on loopback takes two training processes at once."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cifarlab.cli import main

mlflow = pytest.importorskip("mlflow", reason="pip install 'cifarlab[mlflow]' for the tracking tests")

TINY = ["model=fastnet", "model_args={widths: [8, 16, 16]}", "batch_size=32", "eval_batch_size=64", "threads=1",
        "data.val_fraction=0.25", "epochs=2", "--quiet"]


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_run(client, run_dir, epochs=2):
    state = json.loads((run_dir / "mlflow.json").read_text())
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "fastnet" and run.data.params["optim.lr"] == str(run.data.params["optim.lr"])
    assert run.data.tags["model"] == "fastnet" and run.data.tags["torch"]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == list(range(1, epochs + 1))
    assert {m.step: m.value for m in history} == {r["epoch"]: pytest.approx(r["val_acc"]) for r in rows}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run.data.metrics["best_val_acc"] == pytest.approx(summary["best_val_acc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "metrics.jsonl", "report.html"} <= artifacts
    return run


def test_train_mirrors_the_run_in_a_local_store_and_resume_continues_it(easy_folder, tmp_path, monkeypatch):
    from conftest import stop_after_checkpoint

    data = ["--data", str(easy_folder / "train"), "--data-root", str(tmp_path / "cache")]
    undo = stop_after_checkpoint(monkeypatch, 1)
    assert main(["train", "--out", str(tmp_path / "runs" / "a"), *data, *TINY, "--mlflow"]) == 130
    undo()
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"  # a bare --mlflow: beside the run folders
    first = json.loads((tmp_path / "runs" / "a" / "mlflow.json").read_text())
    assert _client(uri).get_run(first["run_id"]).info.status == "KILLED"  # stopped, resumable
    assert main(["train", "--resume", str(tmp_path / "runs" / "a"), "--quiet", "mlflow_checkpoints=true"]) == 0
    run = _check_run(_client(uri), tmp_path / "runs" / "a")
    assert run.info.run_id == first["run_id"]  # the same MLflow run, now finished
    assert len(_client(uri).search_runs([run.info.experiment_id])) == 1
    assert [a.path for a in _client(uri).list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    # artifacts beside the store, not in ./mlruns of whatever folder the command ran in
    assert (tmp_path / "runs" / "mlflow-artifacts").is_dir() and not (Path.cwd() / "mlruns").exists()


def test_a_tracking_server_that_is_down_loses_nothing_and_track_uploads_later(easy_folder, tmp_path, capsys):
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    run_dir = tmp_path / "r"
    t0 = time.monotonic()
    assert main(["train", "--data", str(easy_folder / "train"), "--data-root", str(tmp_path / "cache"),
                 "--out", str(run_dir), *TINY[:-1], "--mlflow", dead]) == 0
    assert time.monotonic() - t0 < 60  # no minutes of HTTP retries
    out = capsys.readouterr().out
    assert f"cifarlab track {run_dir}" in out and (run_dir / "summary.json").is_file()
    uri = f"sqlite:///{tmp_path / 'later.db'}"
    assert main(["track", str(run_dir), "--mlflow", uri]) == 0
    _check_run(_client(uri), run_dir)
    assert main(["track", str(run_dir), "--mlflow", uri]) == 0  # again: nothing sent twice
    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    assert len(_client(uri).get_metric_history(run_id, "val_acc")) == 2


def test_two_trainings_log_to_a_real_mlflow_server_at_once(easy_folder, tmp_path):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([sys.executable, "-m", "cifarlab", "train", "--data", str(easy_folder / "train"),
                                   "--data-root", str(tmp_path / "cache"), "--out", str(tmp_path / f"r{i}"), *TINY,
                                   f"seed={i}", "--mlflow", uri], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for i in range(2)]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        ids = {_check_run(_client(uri), tmp_path / f"r{i}").info.run_id for i in range(2)}
        assert len(ids) == 2
    finally:
        os.killpg(server.pid, 9)
        server.wait()


def test_a_sweep_is_a_parent_run_with_one_child_per_point(easy_folder, tmp_path):
    assert main(["sweep", "--data", str(easy_folder / "train"), "--data-root", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "sw"), "--grid", "optim.lr=0.01,0.02", *TINY, "epochs=1", "--mlflow"]) == 0
    client = _client(f"sqlite:///{tmp_path / 'mlflow.db'}")  # beside the sweep's folder
    parent_id = json.loads((tmp_path / "sw" / "mlflow.json").read_text())["run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "sweep"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(r.info.run_name for r in children) == ["optim.lr=0.01", "optim.lr=0.02"]
    assert all(r.info.status == "FINISHED" and "val_acc" in r.data.metrics for r in children)
