"""Plots and the self-contained HTML report of a run.

Owns curves.png, confusion.png, per_class.csv, predictions.png, mistakes.png and
report.html (images embedded, no network). Works from what a run folder holds plus
one evaluation of its best checkpoint. Never trains.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from .plots import plot_confusion, plot_curves, plot_grid
from .recipes import recipe_reported, reported_line
from .runs import RunDir, atomic_write_text, write_csv


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: rows = true class, columns = predicted class."""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_rows(cm: np.ndarray, classes: list[str]) -> list[dict]:
    rows = []
    for i, name in enumerate(classes):
        n, correct, predicted = int(cm[i].sum()), int(cm[i, i]), int(cm[:, i].sum())
        rows.append({"class": name, "n": n, "correct": correct,
                     "accuracy": round(correct / n, 6) if n else None,
                     "precision": round(correct / predicted, 6) if predicted else None})
    return rows


def _img_tag(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2%}"


def reported_rows(reported, rows: list[dict]) -> list[dict]:
    """The report's numbers at each epoch it prints them, beside this run's at the same epoch ("-" where the run
    has not got there or the report gives none)."""
    by_epoch = {r.get("epoch"): r for r in rows}
    out = []
    for epoch, train, held_out in reported.points if reported else ():
        ours = by_epoch.get(epoch, {})
        out.append({"epoch": epoch, "report_train": train, "run_train": ours.get("train_acc"),
                    "report_val": held_out, "run_val": ours.get("val_acc"),
                    "run_val_running_bn": ours.get("val_acc_running_bn")})
    return out


def _reported_table(reported, rows: list[dict]) -> str:
    table = reported_rows(reported, rows)
    if not table:
        return ""
    kind = reported.metric.split()[0]
    running = any(r["run_val_running_bn"] is not None for r in table)
    head = ["epoch", f"report {reported.report}: train", "this run: train", f"report {reported.report}: {kind}",
            "this run: validation", *(["this run: validation, running BN"] if running else [])]
    body = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in [r["epoch"], _pct(r["report_train"]), _pct(r["run_train"]),
                                                   _pct(r["report_val"]), _pct(r["run_val"]),
                                                   *([_pct(r["run_val_running_bn"])] if running else [])]) + "</tr>"
        for r in table)
    return (f'<h2>Beside report {html.escape(reported.report)}</h2><table id="beside-report"><tr>'
            + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{body}</table>")


def write_html(run: RunDir, summary: dict, per_class: list[dict], config_text: str,
               rows: list[dict] | None = None, seed_report=None) -> Path:
    """report.html; `rows` (metrics.jsonl) and `seed_report` (a seed recipe's ReportedResult) add the table of
    the report's numbers beside the run's."""
    acc = summary.get("best_val_acc")
    facts = [("best validation accuracy", f"{acc:.4f} (epoch {summary.get('best_epoch')})" if acc is not None else "n/a"),
             ("final validation accuracy", summary.get("final_val_acc")),
             (f"final with TTA ({summary.get('tta')})", summary.get("final_val_acc_tta")),
             *([("best with the running BN statistics (no recalibration)",
                 f"{summary['best_val_acc_running_bn']:.4f} (epoch {summary.get('best_epoch_running_bn')})")]
               if summary.get("best_val_acc_running_bn") is not None else []),
             ("epochs", summary.get("epochs")), ("training seconds", summary.get("train_seconds")),
             ("model", f"{summary.get('model')} ({summary.get('parameters', 0):,} parameters)"),
             ("data", f"{summary.get('data')}: {summary.get('num_train')} train / {summary.get('num_val')} val "
                      f"({summary.get('val_source')})"),
             ("device / precision", f"{summary.get('device')} / {summary.get('precision')}"),
             ("torch / git", f"{summary.get('torch_version')} / {summary.get('git_sha') or 'n/a'}")]
    reported = reported_line(summary)
    fact_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    def num(v):
        return "" if v is None else f"{v:.4f}"

    class_rows = "".join(
        f"<tr><td>{html.escape(r['class'])}</td><td>{r['n']}</td><td>{r['correct']}</td>"
        f"<td>{num(r['accuracy'])}</td><td>{num(r['precision'])}</td></tr>" for r in per_class)
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cifarlab run {html.escape(run.path.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} th, td {{ border: 1px solid #ddd; padding: .3rem .6rem; text-align: left; }}
th {{ background: #f5f5f5; }} img {{ max-width: 100%; margin: .5rem 0; }} pre {{ background: #f7f7f7; padding: 1rem; overflow-x: auto; }}
.accuracy {{ font-size: 2rem; font-weight: 600; }} .reported {{ font-size: 1.2rem; color: #444; }}
</style></head><body>
<h1>Run {html.escape(run.path.name)}</h1>
<p class="accuracy" id="accuracy">{f"{acc * 100:.2f}%" if acc is not None else "n/a"} best validation accuracy</p>
{f'<p class="reported" id="reported">{html.escape(reported)}</p>' if reported else ""}
<table>{fact_rows}</table>
<h2>Training curves</h2>{_img_tag(run.path / "curves.png", "training curves")}
{_reported_table(seed_report, rows or [])}
<h2>Confusion matrix</h2>{_img_tag(run.path / "confusion.png", "confusion matrix")}
<h2>Per class</h2><table><tr><th>class</th><th>n</th><th>correct</th><th>accuracy</th><th>precision</th></tr>{class_rows}</table>
<h2>Random validation predictions</h2>{_img_tag(run.path / "predictions.png", "predictions")}
<h2>Most confident mistakes</h2>{_img_tag(run.path / "mistakes.png", "mistakes")}
<h2>Config</h2><pre>{html.escape(config_text)}</pre>
</body></html>
"""
    out = run.path / "report.html"
    atomic_write_text(out, body)
    return out


def write_report(run_dir: str | Path, images: np.ndarray | None, result, classes: list[str], seed: int = 0) -> Path:
    """Write every report artefact. `images`/`result` are the validation images (uint8 NHWC) and their EvalResult."""
    run = RunDir(run_dir)
    rows = run.read_metrics()
    summary = json.loads(run.summary_file.read_text()) if run.summary_file.is_file() else {}
    # a seed recipe's run: its report's own numbers go beside the curves (the config names the recipe)
    seed_report = recipe_reported(run.read_config().get("recipe") if run.config_file.is_file() else None)
    if rows:
        plot_curves(rows, run.path / "curves.png", reported=seed_report)
    per_class: list[dict] = []
    if result is not None and result.n:
        k = len(classes)
        cm = confusion_matrix(result.labels, result.predictions, k)
        plot_confusion(cm, classes, run.path / "confusion.png")
        per_class = per_class_rows(cm, classes)
        write_csv(run.path / "per_class.csv", ["class", "n", "correct", "accuracy", "precision"], per_class)
        rng = np.random.default_rng(seed)
        pick = rng.choice(result.n, size=min(20, result.n), replace=False)
        conf = result.probabilities.max(1)
        plot_grid(images[pick], [f"{classes[result.predictions[i]]} / {classes[result.labels[i]]}" for i in pick],
                  [bool(result.predictions[i] != result.labels[i]) for i in pick],
                  run.path / "predictions.png", "predicted / true (red = wrong)")
        wrong = np.flatnonzero(result.predictions != result.labels)
        worst = wrong[np.argsort(-conf[wrong])][:20]
        plot_grid(images[worst], [f"{classes[result.predictions[i]]} {conf[i]:.2f} / {classes[result.labels[i]]}"
                                  for i in worst], [True] * len(worst), run.path / "mistakes.png",
                  "most confident mistakes: predicted p / true")
    config_text = run.config_file.read_text() if run.config_file.is_file() else ""
    return write_html(run, summary, per_class, config_text, rows, seed_report)


def report_run(run_dir: str | Path, device: str = "auto") -> Path:
    """Regenerate a run's report from its folder: evaluates the best checkpoint on its validation split."""
    from .data import load_splits
    from .inference import load_trained

    run = load_trained(run_dir, "best", device)
    splits = load_splits(run.cfg.data)
    result = run.evaluate(splits.val_x, splits.val_y) if len(splits.val_y) else None
    return write_report(run_dir, splits.val_x, result, run.classes, seed=run.cfg.seed)
