"""Every plot cifarlab draws: training curves, confusion matrix, image grids, experiment results and
run-comparison curves, as PNG files written atomically.

Owns matplotlib (headless, imported only when a plot is drawn). Takes plain numbers and arrays, never
run folders or configs: report.py, experiments.py and compare.py decide what to plot.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from .config import format_value
from .runs import atomic_write_bytes


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_reported_points(ax, reported, train: bool = True) -> None:
    """A seed report's own numbers (ReportedResult.points) as black markers over a run's curves."""
    if reported is None or not reported.points:
        return
    kind = reported.metric.split()[0]  # "validation" or "test", as the report calls its held-out score
    for column, name, style in ((2, kind, dict(marker="D", color="black")),
                                (1, "train", dict(marker="s", markerfacecolor="none", color="dimgray"))):
        pts = [(p[0], p[column]) for p in reported.points if p[column] is not None]
        if pts and (train or column == 2):
            ax.plot(*zip(*pts), linestyle="none", markersize=6, label=f"report {reported.report}: {name}", **style)


def plot_curves(rows: list[dict], path: Path, reported=None) -> None:
    """Loss, accuracy and learning rate per epoch; `reported` (a seed recipe's ReportedResult) adds the report's
    own accuracies to the accuracy panel."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], marker="o", label="train")
        if any(r.get(f"val_{key}") is not None for r in rows):
            ax.plot(epochs, [r.get(f"val_{key}") for r in rows], marker="o", label="validation")
        if any(r.get(f"val_{key}_running_bn") is not None for r in rows):  # bn_recalibrate: both scores
            ax.plot(epochs, [r.get(f"val_{key}_running_bn") for r in rows], marker="o", linestyle="--",
                    label="validation, running BN stats")
        if key == "acc":
            plot_reported_points(ax, reported)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].plot(epochs, [r["lr"] for r in rows], marker="o", color="tab:green")
    axes[2].set_title("learning rate (first step of each epoch)")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    save_png(fig, path)


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path) -> None:
    plt = pyplot()
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(classes)
    size = min(4 + 0.45 * k, 18)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.005:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (rows sum to 1)")
    save_png(fig, path)


def plot_grid(images: np.ndarray, titles: list[str], wrong: list[bool], path: Path, heading: str) -> None:
    plt = pyplot()
    n = max(len(images), 1)
    cols = 5
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.1, rows * 2.3))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    if len(images) == 0:
        np.atleast_1d(axes).ravel()[0].text(0, 0.5, "none", fontsize=14)
    for ax, img, title, bad in zip(np.atleast_1d(axes).ravel(), images, titles, wrong):
        ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None, interpolation="nearest")
        ax.set_title(title, fontsize=8, color="red" if bad else "green")
    fig.suptitle(heading)
    save_png(fig, path)


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_results(rows: list[dict], keys: list[str], path: Path) -> None:
    """One panel per changed key: accuracy against that key's values (mean over the other keys as a line)."""
    plt = pyplot()
    keys = keys or ["run"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        done = [r for r in rows if r["accuracy"] is not None and r.get(key, "") != ""]
        values = list(dict.fromkeys(r[key] for r in done))
        if not done:
            ax.text(0.5, 0.5, "no finished runs yet", ha="center", transform=ax.transAxes)
        elif _numeric(values):
            xs = sorted(values)
            ax.scatter([r[key] for r in done], [r["accuracy"] for r in done], alpha=0.6)
            means = [sum(r["accuracy"] for r in done if r[key] == x) / sum(r[key] == x for r in done) for x in xs]
            ax.plot(xs, means, marker="o")
            if min(xs) > 0 and max(xs) / min(xs) >= 50:
                ax.set_xscale("log", base=2 if all(math.log2(x).is_integer() for x in xs) else 10)
        else:
            labels = [format_value(v) for v in values]
            pos = {labels[i]: i for i in range(len(labels))}
            ax.scatter([pos[format_value(r[key])] for r in done], [r["accuracy"] for r in done], alpha=0.6)
            means = [sum(r["accuracy"] for r in done if format_value(r[key]) == lab) / sum(format_value(r[key]) == lab for r in done)
                     for lab in labels]
            ax.bar(range(len(labels)), means, alpha=0.3)
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    save_png(fig, path)


def plot_val_curves(series: list[tuple[str, list[tuple[int, float]]]], path: Path, reported=None) -> Path:
    """Validation accuracy per epoch, one line per (label, [(epoch, accuracy), ...]); `reported` (the
    ReportedResult of the seed report behind every run) adds the report's own validation accuracies."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, pts in series:
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3, label=label)
    if any(pts for _, pts in series):
        plot_reported_points(ax, reported, train=False)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no validation accuracy recorded (val_fraction=0?)", ha="center", transform=ax.transAxes)
    save_png(fig, Path(path))
    return Path(path)
