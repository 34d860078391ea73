"""Side-by-side comparison of runs: what differs in their configs, what they reached.

Owns reading several run folders into one table (config differences + results),
the accuracy difference of each run against the first (how an ablation is read),
the CSV and the overlay plot of validation accuracy. Sweeps and ablations reuse it.
Never trains or evaluates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import NON_RESULT_KEYS, nested_to_dotted
from .errors import UserError
from .plots import plot_val_curves
from .runs import RunDir, live_writer, write_csv

RESULT_COLUMNS = ["best_val_acc", "final_val_acc", "final_val_acc_tta", "epochs", "train_seconds"]


@dataclass
class RunRecord:
    path: Path
    config: dict  # flattened dotted keys -> values
    summary: dict
    metrics: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        if self.summary:
            return "finished"
        n = len(self.metrics)
        epochs = f"{n} epoch{'' if n == 1 else 's'}"
        if live_writer(self.path):  # a long run being watched, not one left interrupted
            return f"running ({epochs} done)"
        return f"incomplete ({epochs})" if n else "not started"

    def result(self, key: str):
        if key in self.summary:
            return self.summary[key]
        if key in ("best_val_acc", "best_val_acc_running_bn"):  # an unfinished run: its best epoch so far
            column = key.removeprefix("best_")
            accs = [r[column] for r in self.metrics if r.get(column) is not None]
            return max(accs) if accs else None
        if key == "epochs":
            return len(self.metrics) or None
        return None

    @property
    def reported(self):
        """The seed report's ReportedResult when the run started from a seed recipe (finished or not)."""
        from .recipes import recipe_reported

        return recipe_reported(self.config.get("recipe"))

    @property
    def headline(self):
        """The accuracy a run is judged by: final with TTA when measured, else best validation."""
        tta = self.result("final_val_acc_tta")
        return tta if tta is not None else self.result("best_val_acc")


def read_run(path: str | Path) -> RunRecord:
    run = RunDir(path)
    return RunRecord(run.path, nested_to_dotted(run.read_config()), run.read_summary(), run.read_metrics())


def differing_keys(records: list[RunRecord]) -> list[str]:
    """Config keys whose value is not the same in every run (a key missing in one run counts as differing)."""
    keys = sorted(set().union(*(r.config for r in records)) - NON_RESULT_KEYS)
    return [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in records}) > 1]


def comparison_rows(records: list[RunRecord]) -> tuple[list[str], list[dict]]:
    """(columns, rows): run, status, each differing key, the results, and the headline accuracy's
    difference against the first run (the baseline)."""
    if not records:
        raise UserError("no runs to compare; pass two or more run folders")
    keys = differing_keys(records)
    base = records[0].headline
    reported = [r.reported for r in records]
    # a seed recipe's run shows its report's number beside its own (the report's metric, the run's same metric)
    extra = ["reported", "reported_metric"] if any(reported) else []
    # bn_recalibrate runs also show their best score with the running batch-norm statistics
    running_bn = ["best_val_acc_running_bn"] if any(r.result("best_val_acc_running_bn") is not None
                                                    for r in records) else []
    columns = ["run", "status", *keys, *RESULT_COLUMNS, *running_bn, "delta_vs_first", *extra]
    rows = []
    for r, rep in zip(records, reported):
        row = {"run": str(r.path), "status": r.status}
        row.update({k: r.config.get(k) for k in keys})
        row.update({k: r.result(k) for k in [*RESULT_COLUMNS, *running_bn]})
        row["delta_vs_first"] = (round(r.headline - base, 6) if r.headline is not None and base is not None else None)
        if extra:
            row["reported"] = rep.value if rep else None
            row["reported_metric"] = f"{rep.metric}, report {rep.report}" if rep else None
        rows.append(row)
    return columns, rows


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.0f}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def format_table(columns: list[str], rows: list[dict]) -> str:
    """Aligned plain text (works in any terminal and in logs)."""
    shown = columns
    cells = [[Path(row["run"]).name if c == "run" else _cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(shown)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(shown, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def val_series(records: list[RunRecord], keys: list[str] | None = None) -> list[tuple[str, list]]:
    """(label, [(epoch, val_acc), ...]) per run, labelled by up to three of the keys that differ."""
    keys = differing_keys(records) if keys is None else keys
    return [(", ".join(f"{k}={_cell(r.config.get(k))}" for k in keys[:3]) or r.label,
             [(m["epoch"], m["val_acc"]) for m in r.metrics if m.get("val_acc") is not None]) for r in records]


def compare_runs(run_dirs: list[str | Path], csv_path: str | Path | None = None,
                 plot_path: str | Path | None = None) -> tuple[str, list[dict]]:
    """Read the runs, optionally write the CSV and the plot; returns (table text, rows)."""
    if len(run_dirs) < 1:
        raise UserError("no runs to compare; pass two or more run folders")
    records = [read_run(p) for p in run_dirs]
    columns, rows = comparison_rows(records)
    if csv_path:
        write_csv(csv_path, columns, rows)
    if plot_path:
        reports = {r.reported for r in records}  # one report behind every run: its points go on the plot too
        plot_val_curves(val_series(records), plot_path, reported=reports.pop() if len(reports) == 1 else None)
    return format_table(columns, rows), rows
