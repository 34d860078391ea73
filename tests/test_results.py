"""Results people look at and ship: report.html in a real browser, TensorBoard, compare, export."""

import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from cifarlab.cli import main

TINY = ["model=fastnet", "model_args={widths: [8, 16, 16]}", "batch_size=32", "eval_batch_size=64", "threads=1",
        "data.val_fraction=0.25", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished tiny runs that differ in lr and epochs (the first with TensorBoard on)."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from conftest import easy_images, write_folder

    root = tmp_path_factory.mktemp("results")
    x, y = easy_images(60, seed=1)
    data = write_folder(root / "train", x, y)
    common = ["--data", str(data), "--data-root", str(root / "cache"), *TINY]
    a, b = root / "base", root / "lower-lr"
    assert main(["train", "--out", str(a), "epochs=3", "optim.lr=0.05", "--tensorboard", *common]) == 0
    assert main(["train", "--out", str(b), "epochs=2", "optim.lr=0.01", *common]) == 0
    return a, b


# ------------------------------------------------------------------ report.html in a browser

def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium on this machine (.ci/run installs Debian's `chromium`; apt-get install chromium)")


# reports, after load, how many images the page has and how many failed to decode
_PROBE = ("<script>window.addEventListener('load', () => { const imgs = [...document.images]; "
          "document.body.setAttribute('data-images', imgs.length); "
          "document.body.setAttribute('data-broken', imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length);"
          "});</script>")


def load_in_browser(page, tmp_path):
    """(rendered DOM, console messages) of `page` after loading it in headless chromium with a probe script."""
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    out = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                          "--v=0", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120)
    console = [line for line in out.stderr.splitlines() if ":CONSOLE" in line]
    return out.stdout, console


def test_the_browser_check_catches_a_broken_page(tmp_path):
    """The detector itself: a page with a script error and a broken image must fail it."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><html><body><p>x</p><img src="data:image/png;base64,AAAA">'
                    "<script>undefinedFunction();</script></body></html>")
    dom, console = load_in_browser(page, tmp_path)
    assert any("undefinedFunction" in c for c in console)
    assert 'data-broken="1"' in dom


def test_report_loads_in_a_real_browser_with_no_console_errors(runs, tmp_path):
    run = runs[0]
    summary = json.loads((run / "summary.json").read_text())
    dom, console = load_in_browser(run / "report.html", tmp_path)
    assert console == []
    assert f"{summary['best_val_acc'] * 100:.2f}%" in dom
    assert 'data-images="4"' in dom and 'data-broken="0"' in dom  # every embedded plot decodes


# ------------------------------------------------------------------ TensorBoard

def test_tensorboard_scalars_equal_the_metrics_file(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = runs[0]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    for key, tag in (("val_acc", "accuracy/val"), ("train_loss", "loss/train"), ("lr", "lr")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [r["epoch"] for r in rows]
        assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)
    assert not (runs[1] / "tensorboard").exists()  # off unless asked


# ------------------------------------------------------------------ compare

def test_compare_shows_differences_results_and_deltas(runs, tmp_path, capsys):
    a, b = runs
    out_csv, out_png = tmp_path / "cmp.csv", tmp_path / "cmp.png"
    assert main(["compare", str(a), str(b), "--csv", str(out_csv), "--plot", str(out_png)]) == 0
    text = capsys.readouterr().out
    assert "optim.lr" in text and "epochs" in text and a.name in text and b.name in text
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["run"] for r in rows] == [str(a), str(b)]
    assert [float(r["optim.lr"]) for r in rows] == [0.05, 0.01]
    assert "data.spec" not in rows[0] and "model" not in rows[0]  # only what differs
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in runs)
    assert float(rows[1]["best_val_acc"]) == pytest.approx(sb["best_val_acc"])
    head = (lambda s: s["final_val_acc_tta"] if s["final_val_acc_tta"] is not None else s["best_val_acc"])
    assert float(rows[0]["delta_vs_first"]) == 0.0
    assert float(rows[1]["delta_vs_first"]) == pytest.approx(head(sb) - head(sa), abs=1e-6)
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_compare_marks_an_unfinished_run_and_rejects_a_non_run(runs, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(runs[0], partial)
    (partial / "summary.json").unlink()
    lines = (partial / "metrics.jsonl").read_text().splitlines()[:1]
    (partial / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    from cifarlab.compare import compare_runs

    _, rows = compare_runs([runs[0], partial])
    assert rows[1]["status"] == "incomplete (1 epoch)"
    assert rows[1]["best_val_acc"] == json.loads(lines[0])["val_acc"]
    import subprocess
    import sys

    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # stands in for a live run
    try:
        (partial / ".lock").write_text(str(trainer.pid))
        assert compare_runs([partial])[1][0]["status"] == "running (1 epoch done)"
    finally:
        trainer.kill()
        trainer.wait()
    assert compare_runs([partial])[1][0]["status"] == "incomplete (1 epoch)"  # its process gone: resumable
    assert main(["compare", str(tmp_path)]) == 2
    assert "not a cifarlab run folder" in capsys.readouterr().err


# ------------------------------------------------------------------ export

@pytest.mark.parametrize("fmt", ["onnx", "pt2", "torchscript"])
def test_export_gives_the_same_logits_as_pytorch(runs, tmp_path, fmt, capsys):
    from cifarlab.inference import load_trained

    out = tmp_path / f"model.{fmt}"
    assert main(["export", str(runs[0]), "--format", fmt, "--out", str(out)]) == 0
    info = json.loads(out.with_suffix(out.suffix + ".json").read_text())
    assert info["max_abs_diff"] <= 1e-4 and info["classes"] == ["class0", "class1", "class2", "class3"]
    # an independent check on a batch size the export never saw: real [0,1] images through both
    run = load_trained(runs[0], "best", "cpu")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    images = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = run.model.float()(run.normaliser()(torch.from_numpy(x)).float())
    if fmt == "onnx":
        import onnxruntime as ort

        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": images.numpy()})[0]
        got = torch.from_numpy(got)
    elif fmt == "pt2":
        got = torch.export.load(str(out)).module()(images)
    else:
        got = torch.jit.load(str(out))(images)
    assert got.shape == (5, 4)
    assert (got - expected).abs().max().item() <= 1e-4


def test_export_of_a_non_run_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["onnx", "pt2", "torchscript"])
def test_export_of_a_mixconv_model_serves_any_batch(tmp_path, fmt):
    """mix-conv's grouped convolution has groups = batch, which an exporter would bake in: exports record the
    wide form instead, so the file serves another batch size with the same logits."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from conftest import easy_images, write_folder

    from cifarlab.export import export_run
    from cifarlab.inference import load_trained

    x, y = easy_images(20, seed=1)
    data = write_folder(tmp_path / "train", x, y)
    run = tmp_path / "mix"
    assert main(["train", "--data", str(data), "--data-root", str(tmp_path / "cache"), "--out", str(run), "--quiet",
                 "model=mixconv002", "model_args={widths: [8, 8, 16, 16, 16, 16]}", "epochs=1", "batch_size=16",
                 "threads=1"]) == 0
    info = export_run(run, fmt, tmp_path / f"m.{fmt}", log=lambda *_: None)
    assert info["max_abs_diff"] <= info["tolerance"] and info["input"]["shape"][0] == "batch"
    images = torch.rand(3, 3, 16, 16)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    elif fmt == "pt2":
        got = torch.export.load(str(tmp_path / "m.pt2")).module()(images)
    else:
        got = torch.jit.load(str(tmp_path / "m.torchscript"))(images)
    trained = load_trained(run, "best", "cpu")
    with torch.no_grad():  # the trained model as training built it: its own (grouped) forms
        expected = trained.model.float()((images - torch.tensor(trained.record.mean).view(1, -1, 1, 1))
                                         / torch.tensor(trained.record.std).view(1, -1, 1, 1))
    assert got.shape == (3, 4)
    assert (got - expected).abs().max().item() <= info["tolerance"]


@pytest.mark.parametrize("module, argv, hint", [
    ("optuna", ["tune", "--space", "space.yaml", "--data", "DATA"], "pip install 'cifarlab[tune]'"),
    ("onnxscript", ["export", "RUN"], "pip install 'cifarlab[onnx]'"),
    ("tensorboard", ["train", "--data", "DATA", "--tensorboard", "epochs=1"], "pip install 'cifarlab[tensorboard]'"),
])
def test_a_missing_extra_is_one_line_naming_the_install(runs, tmp_path, monkeypatch, capsys, module, argv, hint):
    import sys

    for name in list(sys.modules):
        if name == module or name.startswith(module + ".") or (module == "tensorboard" and "tensorboard" in name):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    (tmp_path / "space.yaml").write_text("optim.lr: {type: float, low: 0.01, high: 0.1}\n")
    data = runs[0].parent / "train"
    argv = [str(runs[0]) if a == "RUN" else str(data) if a == "DATA" else
            str(tmp_path / a) if a == "space.yaml" else a for a in argv]
    if argv[0] != "export":
        argv += ["--out", str(tmp_path / "out"), *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert hint in err and err.count("\n") == 1


def test_an_overflowed_loss_is_written_as_strict_json_and_still_plots(tmp_path):
    """Python writes nan as a bare NaN token, which jq, JavaScript and pandas' JSON engine reject; the run
    folder's files hold null there instead, and the curves still draw (a gap at that epoch)."""
    from cifarlab.plots import plot_curves
    from cifarlab.runs import RunDir, write_json

    def strict(text):
        return json.loads(text, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))

    run = RunDir(tmp_path)
    run.append_metrics({"epoch": 1, "lr": 0.1, "train_loss": 2.0, "train_acc": 0.2, "val_loss": 1.9, "val_acc": 0.3})
    run.append_metrics({"epoch": 2, "lr": 0.1, "train_loss": float("nan"), "train_acc": 0.1,
                        "val_loss": float("inf"), "val_acc": 0.1, "val_nonfinite": 7})
    rows = [strict(line) for line in run.metrics_file.read_text().splitlines()]
    assert rows[1]["train_loss"] is None and rows[1]["val_loss"] is None and rows[1]["val_nonfinite"] == 7
    assert rows[0]["train_loss"] == 2.0 and run.read_metrics() == rows
    write_json(tmp_path / "summary.json", {"final_train_loss": float("nan"), "per_epoch": [float("-inf"), 1.5]})
    assert strict((tmp_path / "summary.json").read_text()) == {"final_train_loss": None, "per_epoch": [None, 1.5]}
    plot_curves(rows, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000
