"""What a run prints: a rich progress bar per epoch on a terminal, plain lines elsewhere.

Owns the wording and pace of console output (never more than one plain line per
epoch, so logs stay readable). Never computes metrics.
"""

from __future__ import annotations

import sys
import time


class Reporter:
    """Console output for a run. quiet=True prints nothing but errors."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) and not quiet
        self._progress = None
        self._task = None
        self._t0 = 0.0

    def info(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=self.stream, flush=True)

    def start_epoch(self, epoch: int, epochs: int, total_images: int) -> None:
        self._t0 = time.perf_counter()
        if not self.tty:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[speed]} img/s"), TextColumn("ETA"), TimeRemainingColumn(),
                                  transient=True)
        self._progress.start()
        self._task = self._progress.add_task("train", total=total_images, speed="-")

    def advance(self, images: int, seen: int) -> None:
        if self._progress is not None:
            elapsed = max(time.perf_counter() - self._t0, 1e-9)
            self._progress.update(self._task, advance=images, speed=f"{seen / elapsed:,.0f}")

    def end_epoch(self, row: dict, epochs: int, best: bool, seconds_left: float = 0.0) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.quiet:
            return
        val = (f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}{' *' if best else ''}"
               if row.get("val_acc") is not None else "no validation split")
        if row.get("val_acc_running_bn") is not None:
            val += f" (running BN stats: {row['val_acc_running_bn']:.4f})"
        if row.get("val_nonfinite"):
            n = row["val_nonfinite"]
            val += f" ({n:,} image{'' if n == 1 else 's'} with inf/nan logits)"
        self.info(f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.3g}  train_loss {row['train_loss']:.4f}  "
                  f"train_acc {row['train_acc']:.4f}  {val}  {row['seconds']:.1f}s  {row['images_per_second']:,.0f} img/s"
                  + (f"  ~{_duration(seconds_left)} left" if seconds_left > 0 else ""))


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return "<1m"
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
