"""torchrun with 2 CPU processes (gloo) trains exactly what 1 process trains with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

from cifarlab.cli import main
from cifarlab.runs import load_checkpoint

# whiten_bias_epochs=1: the stem's bias freezes before epoch 2, so DDP is rebuilt mid-run (and must still agree)
# bn_recalibrate: every process recomputes the statistics over the same images through the cross-rank batch
# norm before each evaluation; the checkpoints' running statistics must still equal one process's
COMMON = ["model=fastnet", "model_args={widths: [8, 16, 16], whiten_bias_epochs: 1}", "batch_size=32",
          "eval_batch_size=64", "epochs=2", "bn_recalibrate=64",
          "precision=fp32", "threads=1", "optim.lr=0.05", "augment.flip_mode=alternate", "augment.translate_px=2",
          "data.val_fraction=0.25", "--quiet"]


def torchrun(args, tmp_path, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "cifarlab", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


def test_two_gloo_processes_equal_one_process(easy_folder, tmp_path):
    data = ["--data", str(easy_folder / "train"), "--data-root", str(tmp_path / "cache")]
    assert main(["train", "--out", str(tmp_path / "one"), *data, *COMMON]) == 0
    done = torchrun(["--out", str(tmp_path / "two"), *data, *COMMON], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    one = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    two = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    assert one["model"].keys() == two["model"].keys()  # plain batch-norm names: checkpoints interchange
    for key, a in one["model"].items():
        b = two["model"][key]
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"{key} differs")
        else:
            assert torch.equal(a, b), key
    m1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(m1) == len(m2) == 2
    for r1, r2 in zip(m1, m2):  # losses reduced over ranks = the single process's
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-4)
        assert r2["val_acc"] == pytest.approx(r1["val_acc"], abs=1e-9)
    assert (tmp_path / "two" / "summary.json").is_file() and not (tmp_path / "two" / ".lock").exists()


def test_torchrun_needs_an_explicit_run_folder(easy_folder, tmp_path):
    done = torchrun(["--data", str(easy_folder / "train"), *COMMON], tmp_path)
    assert done.returncode != 0 and "pass --out RUN_DIR" in done.stderr


def test_torchrun_resumes_a_run_interrupted_after_its_first_epoch(easy_folder, tmp_path, monkeypatch):
    """A run stopped after epoch 1 and resumed by 2 processes ends where 1 uninterrupted process ends."""
    from conftest import stop_after_checkpoint

    data = ["--data", str(easy_folder / "train"), "--data-root", str(tmp_path / "cache")]
    assert main(["train", "--out", str(tmp_path / "clean"), *data, *COMMON]) == 0
    undo = stop_after_checkpoint(monkeypatch, 1)
    assert main(["train", "--out", str(tmp_path / "cut"), *data, *COMMON]) == 130
    undo()
    done = torchrun(["--resume", str(tmp_path / "cut"), "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "clean" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key, v in b["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(a["model"][key], v, rtol=1e-4, atol=1e-5, msg=f"{key} differs")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(args, tmp_path, port: int):
    """Two torchrun launchers, one process each, meeting through a c10d rendezvous on loopback: what two
    machines run, each with `--nnodes 2` and the first one's address as --rdzv-endpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", f"cifarlab-test-{port}", "--max-restarts", "0",
               "-m", "cifarlab", "train", *args]
        log = open(tmp_path / f"node{node}-{port}.log", "w")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                       start_new_session=True), log))
    return procs


def _kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process below it: torchrun starts its workers in their own sessions,
    so killing the launcher's process group alone would leave the worker training."""
    parents = {}
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
                parents[int(stat)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    for p in reversed(tree):  # the worker first: a launcher killed first could not be told anything anyway
        try:
            os.kill(p, 9)
        except ProcessLookupError:
            pass


def _wait(procs, timeout: float = 240) -> list[int]:
    codes = []
    for p, log in procs:
        try:
            codes.append(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            codes.append(p.wait())
        log.close()
    return codes


def _assert_same_weights(a: dict, b: dict, rtol=1e-4, atol=1e-5) -> None:
    for key, v in a["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(b["model"][key], v, rtol=rtol, atol=atol, msg=f"{key} differs")


@pytest.mark.slow
def test_two_nodes_train_what_one_process_trains_and_resume_after_a_node_dies(easy_folder, tmp_path):
    """Multi-node torchrun (c10d rendezvous, one process per node, loopback): the same weights as one
    process; a node killed mid-run, then `--resume` on both nodes, ends where an uninterrupted run ends."""
    import time

    data = ["--data", str(easy_folder / "train"), "--data-root", str(tmp_path / "cache")]
    assert main(["train", "--out", str(tmp_path / "one"), *data, *COMMON]) == 0
    codes = _wait(_two_nodes(["--out", str(tmp_path / "two"), *data, *COMMON], tmp_path, _free_port()))
    assert codes == [0, 0], [p.read_text()[-2000:] for p in tmp_path.glob("node*.log")]
    _assert_same_weights(load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt"),
                         load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt"))

    # longer runs, so that a kill lands mid-run; compared with the same two nodes uninterrupted (over 6
    # epochs the summation order of the all-reduce drifts from one process's by more than 1e-4)
    longer = [*COMMON[:-1], "epochs=6", "--quiet"]
    codes = _wait(_two_nodes(["--out", str(tmp_path / "whole"), *data, *longer], tmp_path, _free_port()))
    assert codes == [0, 0], [p.read_text()[-2000:] for p in tmp_path.glob("node*.log")]
    procs = _two_nodes(["--out", str(tmp_path / "cut"), *data, *longer], tmp_path, _free_port())
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_tree(procs[1][0].pid)  # node 1 dies as soon as the first epoch is on disk
    codes = _wait(procs, timeout=120)
    assert codes[1] != 0 and codes[0] != 0  # the survivor notices and stops instead of hanging
    assert metrics.read_text().count("\n") < 6, "the run finished before the kill; nothing was tested"

    codes = _wait(_two_nodes(["--resume", str(tmp_path / "cut"), "--quiet"], tmp_path, _free_port()))
    assert codes == [0, 0], [p.read_text()[-2000:] for p in tmp_path.glob("node*.log")]
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert cut["epoch"] == whole["epoch"] == 6
    _assert_same_weights(whole, cut, rtol=1e-6, atol=1e-7)
