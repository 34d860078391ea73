"""Evaluation: recomputing batch-norm statistics (precise BN) exactly, nothing else touched, used by training;
scoring the weights of kept epochs."""

import json

import pytest
import torch

from cifarlab.distributed import CrossRankBatchNorm
from cifarlab.evaluate import recalibrate_batchnorm


def _net(bn=None) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), bn or torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 2, 1), torch.nn.BatchNorm2d(2))


def test_recalibration_averages_batch_statistics_and_touches_nothing_else():
    net = _net().eval()
    bn = net[1]
    bn.running_mean.fill_(7.0)  # stale statistics, as after fast-moving weights
    bn.running_var.fill_(50.0)
    bn.momentum = 0.3
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(16, 3, 8, 8) * (i + 1) + i for i in range(3)]

    assert recalibrate_batchnorm(net, [(x, None) for x in batches], torch.device("cpu"), "fp32") == 48

    with torch.no_grad():  # the expected values, in float64, from the first conv's outputs
        outs = [net[0].double()(x.double()) for x in batches]
        net[0].float()
    means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs])
    vars_ = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outs])
    assert torch.allclose(bn.running_mean.double(), means.mean(0), rtol=1e-4, atol=1e-5)
    assert torch.allclose(bn.running_var.double(), vars_.mean(0), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.3 and not net.training  # restored
    for k, v in net.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


def test_after_recalibration_eval_mode_matches_batch_statistics():
    net = _net()
    x = torch.randn(256, 3, 8, 8) * 3 + 1
    with torch.no_grad():
        net.train()
        net[1].momentum = net[4].momentum = 0.0  # batch statistics, running ones untouched
        wanted = net(x)
        net[1].momentum = net[4].momentum = 0.1
        net.eval()
        stale = net(x)
    recalibrate_batchnorm(net, [x], torch.device("cpu"), "fp32")
    with torch.no_grad():
        got = net(x)
    assert (stale - wanted).abs().max() > 0.5  # the untouched running statistics were far off
    # the only difference left: running variances are unbiased (n/(n-1)), batch norm's own are not
    assert torch.allclose(got, wanted, atol=2e-3, rtol=2e-3)


def test_recalibration_reaches_the_cross_rank_batch_norm():
    import socket

    import torch.distributed as dist

    with socket.socket() as s:  # a free loopback port for a one-process gloo group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        net = _net(CrossRankBatchNorm(torch.nn.BatchNorm2d(4))).eval()
        net[1].running_var.fill_(50.0)
        x = torch.randn(8, 3, 8, 8)
        recalibrate_batchnorm(net, [x], torch.device("cpu"), "fp32")
        with torch.no_grad():
            wanted = net[0](x).var(dim=(0, 2, 3), unbiased=True)
        assert torch.allclose(net[1].running_var, wanted, rtol=1e-4) and net[1].momentum == 0.1
    finally:
        dist.destroy_process_group()


def test_training_recalibrates_before_each_evaluation_and_eval_can_redo_it(easy_folder, tmp_path):
    from cifarlab.api import train_run
    from cifarlab.progress import Reporter
    from cifarlab.recipes import resolve_config

    def run(recalibrate: int):
        out = tmp_path / f"run{recalibrate}"
        cfg = resolve_config(None, None, str(easy_folder / "train"), {
            "model": "fastnet", "model_args": {"widths": [8, 16, 16]}, "epochs": 1, "batch_size": 32, "threads": 1,
            "bn_recalibrate": recalibrate, "tta": "none"})
        summary = train_run(cfg, out, reporter=Reporter(quiet=True))
        return summary, torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]

    plain, plain_state = run(0)
    calibrated, state = run(96)
    key = next(k for k in state if k.endswith("running_var"))
    # same seed, same training: only the statistics differ, and they were rebuilt from scratch
    assert not torch.equal(state[key], plain_state[key])
    assert int(state[key.replace("running_var", "num_batches_tracked")]) == 3  # 96 images in batches of 32
    assert plain.final_train_loss == calibrated.final_train_loss
    # each epoch also scores the weights with the running statistics first: exactly what the run without
    # recalibration measured, so one run gives both the faithful and the precise-BN number
    rows = {r: [json.loads(line) for line in (tmp_path / f"run{r}" / "metrics.jsonl").read_text().splitlines()]
            for r in (0, 96)}
    assert "val_acc_running_bn" not in rows[0][0]
    assert rows[96][0]["val_acc_running_bn"] == rows[0][0]["val_acc"]
    assert rows[96][0]["val_loss_running_bn"] == rows[0][0]["val_loss"]
    assert calibrated.best_val_acc_running_bn == plain.best_val_acc and calibrated.best_epoch_running_bn == 1
    assert calibrated.final_val_acc_running_bn == plain.final_val_acc and plain.best_val_acc_running_bn is None

    # `cifarlab eval --bn-stats`: the run's own way (the stored, recalibrated statistics), recalibrated again
    # (the same images at the same batch size: the same statistics), the running averages of a plain run,
    # each batch's own statistics; each written beside the others
    from cifarlab.cli import main

    run96, run0 = tmp_path / "run96", tmp_path / "run0"
    scores = {}
    for mode in ("run", "recalibrate", "batch"):
        assert main(["eval", str(run96), "--bn-stats", mode, "--quiet"]) == 0
        scores[mode] = json.loads((run96 / ("eval.json" if mode == "run" else f"eval-bn-{mode}.json")).read_text())
    assert scores["run"]["accuracy"] == calibrated.final_val_acc and scores["run"]["bn_stats"] == "running"
    assert scores["recalibrate"]["accuracy"] == calibrated.final_val_acc
    assert abs(scores["recalibrate"]["loss"] - scores["run"]["loss"]) < 1e-4
    assert scores["recalibrate"]["calibration_images"] == 96 and scores["batch"]["bn_stats"] == "batch"
    assert scores["batch"]["loss"] != scores["run"]["loss"]
    assert main(["eval", str(run0), "--bn-stats", "running", "--quiet"]) == 0
    assert json.loads((run0 / "eval-bn-running.json").read_text())["accuracy"] == plain.final_val_acc
    assert main(["eval", str(run0), "--bn-stats", "recalibrate", "--calibration-images", "64", "--quiet"]) == 0
    assert json.loads((run0 / "eval-bn-recalibrate.json").read_text())["calibration_images"] == 64
    assert main(["eval", str(run0), "--calibration-images", "64"]) == 2  # only with recalibrate
    assert main(["eval", str(run0), "--bn-stats", "batch", "--int8"]) == 2  # int8 folds its batch norms


def test_batch_statistics_evaluation_is_a_loop_without_model_eval_in_a_fixed_mixed_order():
    """eval_bn_stats=batch, as report 002's validation loop (no model.eval()): each batch normalised by its
    own statistics, batches drawn in a seeded random order (the split may be stored class by class), the
    results put back in the split's order, and the model's running statistics left as they were."""
    import numpy as np

    from cifarlab.augment import Augmenter
    from cifarlab.evaluate import evaluate
    from cifarlab.loader import DeviceLoader

    body = _net()
    net = torch.nn.Sequential(body, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()  # 2 classes
    body[1].running_var.fill_(50.0)  # stale: eval mode would score very differently
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    labels = np.repeat([0, 1], 20)  # stored class by class
    loader = DeviceLoader(images, labels, 16, torch.device("cpu"), Augmenter(None, (0.5,), (0.5,), channels_last=False),
                          shuffle=False, augment=False)
    cpu = torch.device("cpu")
    got = evaluate(net, loader, cpu, "fp32", bn_stats="batch")
    running = evaluate(net, loader, cpu, "fp32")
    assert not net.training
    for k, v in net.state_dict().items():  # nothing changed, num_batches_tracked included
        assert torch.equal(v, before[k]), k

    mixed = DeviceLoader(images, labels, 16, cpu, Augmenter(None, (0.5,), (0.5,), channels_last=False),
                         shuffle=True, augment=False)
    order = mixed.order(0)
    assert sorted(order.tolist()) == list(range(40)) and order.tolist() != list(range(40))
    with torch.no_grad():
        net.train()
        for m in (body[1], body[4]):
            m.momentum = 0.0  # batch statistics, running ones untouched
        logits = torch.cat([net(x) for x, _ in mixed.epoch(0)])
        net.eval()
    wanted = torch.empty_like(logits)
    wanted[order] = logits  # back in the split's order
    assert np.array_equal(got.labels, labels)
    assert np.array_equal(got.predictions, wanted.argmax(1).numpy())
    assert np.allclose(got.probabilities, torch.softmax(wanted, 1).numpy(), atol=1e-6)
    assert abs(got.loss - torch.nn.functional.cross_entropy(wanted, torch.from_numpy(labels)).item()) < 1e-5
    assert not np.allclose(got.probabilities, running.probabilities, atol=1e-3)


def test_training_scores_with_batch_statistics_when_the_recipe_says_so(easy_folder, tmp_path):
    import dataclasses

    import pytest

    from cifarlab.api import train_run
    from cifarlab.data import load_splits
    from cifarlab.errors import UserError
    from cifarlab.inference import load_trained
    from cifarlab.predict import predict_run
    from cifarlab.progress import Reporter
    from cifarlab.recipes import resolve_config

    assert resolve_config("seed002").eval_bn_stats == "batch" and resolve_config("seed001").eval_bn_stats == "running"
    with pytest.raises(UserError, match="set one of them"):
        resolve_config("seed002", overrides={"bn_recalibrate": 100})
    out = tmp_path / "run"
    cfg = resolve_config(None, None, str(easy_folder / "train"), {
        "model": "fastnet", "model_args": {"widths": [8, 16, 16]}, "epochs": 1, "batch_size": 32, "threads": 1,
        "eval_bn_stats": "batch", "tta": "none"})
    summary = train_run(cfg, out, reporter=Reporter(quiet=True))
    run = load_trained(out, "last")
    splits = load_splits(cfg.data)
    again = run.evaluate(splits.val_x, splits.val_y)  # `cifarlab eval` scores the same way the run did
    assert again.accuracy == summary.final_val_acc
    as_running = dataclasses.replace(run, record=dataclasses.replace(
        run.record, cfg=dataclasses.replace(run.cfg, eval_bn_stats="running")))
    assert as_running.evaluate(splits.val_x, splits.val_y).loss != again.loss
    said = []
    predictions = predict_run(out, [str(easy_folder / "test")], log=said.append)
    assert len(predictions) == 80 and any("eval_bn_stats=batch" in line for line in said)


def test_images_with_overflowing_logits_are_counted_so_a_nan_loss_says_why():
    """A model that overflows on some inputs (as report 001's linear-mixing net does on bright images in eval
    mode) gives a nan mean loss; evaluate counts those images instead of leaving a bare nan."""
    import numpy as np

    from cifarlab.augment import Augmenter
    from cifarlab.evaluate import evaluate
    from cifarlab.loader import DeviceLoader

    class Squares(torch.nn.Module):  # each pass squares its input: bright images blow up to inf, dark ones don't
        def forward(self, x):
            x = x.mean(dim=(1, 2, 3))[:, None] + 2.0
            for _ in range(8):
                x = x * x
            return torch.cat([x, -x], 1) * 1e30

    images = np.zeros((10, 4, 4, 3), np.uint8)
    images[:3] = 255  # mean 1 after fixed 0.5/0.5 normalisation: (1+2)^256 overflows
    labels = np.zeros(10, np.int64)
    loader = DeviceLoader(images, labels, 4, torch.device("cpu"), Augmenter(None, (0.5,), (0.5,), channels_last=False),
                          shuffle=False, augment=False)
    result = evaluate(Squares(), loader, torch.device("cpu"), "fp32")
    assert result.nonfinite == 3 and result.n == 10
    assert result.loss != result.loss  # nan, as it should be: the count says why
    assert result.as_dict()["nonfinite"] == 3
    finite = evaluate(Squares(), DeviceLoader(images[3:], labels[3:], 4, torch.device("cpu"),
                                              Augmenter(None, (0.5,), (0.5,), channels_last=False),
                                              shuffle=False, augment=False), torch.device("cpu"), "fp32")
    assert finite.nonfinite == 0 and "nonfinite" not in finite.as_dict()


def test_kept_epoch_checkpoints_score_as_their_epoch_did_and_a_resume_can_start_keeping(easy_folder, tmp_path,
                                                                                         capsys):
    """keep_checkpoints=N keeps epoch-NNN.pt every N epochs; `eval --checkpoint N` scores those weights exactly
    as that epoch scored itself and writes beside the run's own eval.json; an epoch not kept fails in one
    line naming the kept ones; a resumed run may turn keeping on (it changes no result)."""
    from cifarlab.cli import main

    run = tmp_path / "run"
    common = ["--data", str(easy_folder / "train"), "--data-root", str(tmp_path / "cache"), "model=fastnet",
              "model_args={widths: [8, 16, 16]}", "batch_size=32", "threads=1", "tta=none", "--quiet"]
    assert main(["train", "--out", str(run), "epochs=4", "keep_checkpoints=2", "--stop-after-epochs", "2",
                 *common]) == 0
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch-*")) == ["epoch-002.pt"]
    (run / "checkpoints" / "epoch-002.pt").unlink()  # as if killed between last.pt and its copy: resume keeps it
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    kept = sorted(p.name for p in (run / "checkpoints").glob("epoch-*"))
    assert kept == ["epoch-002.pt", "epoch-004.pt"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for epoch in (2, 4):
        assert main(["eval", str(run), "--checkpoint", str(epoch), "--quiet"]) == 0
        score = json.loads((run / f"eval-epoch-{epoch:03d}.json").read_text())
        assert score["accuracy"] == rows[epoch - 1]["val_acc"] and score["checkpoint"] == f"epoch-{epoch:03d}"
        state = torch.load(run / "checkpoints" / f"epoch-{epoch:03d}.pt", weights_only=True)
        assert state["epoch"] == epoch
    assert not (run / "eval.json").exists()  # the run's own evaluation is not overwritten by an epoch's
    capsys.readouterr()
    assert main(["eval", str(run), "--checkpoint", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "kept: 2, 4" in err and "keep_checkpoints" in err
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it, naming what --checkpoint accepts
        main(["eval", str(run), "--checkpoint", "soon"])
    assert exit_.value.code == 2 and "best, last or an epoch number" in capsys.readouterr().err

    # keeping is not part of a run's result: a run started without it may keep from its resume on
    other = tmp_path / "other"
    assert main(["train", "--out", str(other), "epochs=2", "--stop-after-epochs", "1", *common]) == 0
    assert main(["train", "--resume", str(other), "keep_checkpoints=1", "--quiet"]) == 0
    # from the epoch it resumed at (its weights are last.pt's) on
    assert sorted(p.name for p in (other / "checkpoints").glob("epoch-*")) == ["epoch-001.pt", "epoch-002.pt"]
    assert torch.load(other / "checkpoints" / "epoch-001.pt", weights_only=True)["epoch"] == 1
