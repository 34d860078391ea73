"""The run folder: one folder of evidence per run, every file written atomically.

Owns the layout (config.yaml, metrics.jsonl, summary.json, checkpoints/), the lock
that stops two processes writing one run, and safe checkpoint loading
(weights_only=True). Never decides what to train.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import tempfile
from pathlib import Path

from .errors import UserError

CHECKPOINT_FORMAT = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_csv(path: str | Path, columns: list[str], rows: list) -> Path:
    """Atomic CSV: a header, then rows as dicts keyed by column or as lists in column order; list and
    dict cells are written as JSON."""
    import csv

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    for row in rows:
        cells = [row.get(c) for c in columns] if isinstance(row, dict) else list(row)
        w.writerow([json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v) for v in cells])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())
    return path


def strict_json(obj, **kwargs) -> str:
    """JSON that strict readers (jq, JavaScript, pandas' engine) accept: a nan or inf (a loss that
    overflowed) is written as null, which every reader here already takes as "no number"."""
    return json.dumps(_finite_or_none(obj), allow_nan=False, **kwargs)


def _finite_or_none(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, strict_json(obj, indent=2, sort_keys=False) + "\n")


def default_run_dir(label: str, base: str | Path = "runs") -> Path:
    """runs/<time>-<label>, made unique: where a run or experiment goes when no --out is given."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(base) / f"{stamp}-{label}"
    n = 1
    while path.exists():
        n += 1
        path = Path(base) / f"{stamp}-{label}-{n}"
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_writer(run_path: str | Path) -> int | None:
    """The pid of the live process training in this run folder (it holds the lock), or None."""
    try:
        pid = int((Path(run_path) / ".lock").read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid and _pid_alive(pid) else None


class RunDir:
    """Paths and writers for one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.config_file = self.path / "config.yaml"
        self.metrics_file = self.path / "metrics.jsonl"
        self.summary_file = self.path / "summary.json"
        self.lock_file = self.path / ".lock"  # holds the training process's pid (live_writer reads it)
        self._locked = False

    # ---------------------------------------------------------------- lock
    def lock(self) -> None:
        """Take the run's lock; a lock left by a dead process is taken over."""
        self.path.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.lock_file.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _pid_alive(pid):
                    raise UserError(f"run folder {self.path} is in use by process {pid}; wait for it or pick another --out")
                self.lock_file.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self._locked = True
            return
        raise UserError(f"could not lock run folder {self.path}; remove {self.lock_file} if no run uses it")

    def unlock(self) -> None:
        if self._locked:
            self.lock_file.unlink(missing_ok=True)
            self._locked = False

    # ---------------------------------------------------------------- what a run wrote
    def read_config(self) -> dict:
        """config.yaml as a nested dict (as written: it may predate keys added since)."""
        import yaml

        if not self.config_file.is_file():
            raise UserError(f"{self.path} is not a cifarlab run folder (no config.yaml); pass folders made by "
                            "`cifarlab train`")
        return yaml.safe_load(self.config_file.read_text()) or {}

    def read_summary(self) -> dict:
        """summary.json, or {} while the run has not finished."""
        return json.loads(self.summary_file.read_text()) if self.summary_file.is_file() else {}

    @property
    def finished(self) -> bool:
        return self.summary_file.is_file()

    # ---------------------------------------------------------------- metrics
    def append_metrics(self, row: dict) -> None:
        """Rewrite metrics.jsonl with the new line (atomic: a kill never leaves half a line)."""
        rows = self.read_metrics() + [row]
        atomic_write_text(self.metrics_file, "".join(strict_json(r) + "\n" for r in rows))

    def read_metrics(self) -> list[dict]:
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def keep_metrics_through(self, epoch: int) -> None:
        """On resume: drop lines of epochs after the checkpoint (they will be redone)."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= epoch]
        atomic_write_text(self.metrics_file, "".join(strict_json(r) + "\n" for r in rows))

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, state: dict, name: str) -> Path:
        """Atomic write; the replaced last.pt is kept as last.prev.pt, the fallback if the new one goes bad."""
        import torch  # here, not at import: reading a run folder (compare, experiments) needs no torch

        buf = io.BytesIO()
        torch.save(state, buf)
        path = self.checkpoints / f"{name}.pt"
        if name == "last" and path.is_file():
            tmp = self.checkpoints / ".last.pt.new"
            atomic_write_bytes(tmp, buf.getvalue())
            os.replace(path, self.checkpoints / "last.prev.pt")
            os.replace(tmp, path)
        else:
            atomic_write_bytes(path, buf.getvalue())
        return path

    def load_resume_checkpoint(self, map_location="cpu", log=print) -> dict:
        """last.pt, or, when it is missing or unreadable (disk full, truncated copy), the one before it."""
        last, prev = self.checkpoints / "last.pt", self.checkpoints / "last.prev.pt"
        try:
            return load_checkpoint(last, map_location)
        except UserError as err:
            if not prev.is_file():
                raise
            state = load_checkpoint(prev, map_location)
            log(f"warning: {err}; resuming from the previous checkpoint {prev.name} (after epoch {state['epoch']})")
            return state

    def has_resume_checkpoint(self) -> bool:
        return (self.checkpoints / "last.pt").is_file() or (self.checkpoints / "last.prev.pt").is_file()

    def kept_epochs(self) -> list[int]:
        """The epochs whose checkpoints keep_checkpoints kept, in order."""
        return sorted(int(p.stem.removeprefix("epoch-")) for p in self.checkpoints.glob("epoch-*.pt")
                      if p.stem.removeprefix("epoch-").isdigit())


def epoch_checkpoint(epoch: int) -> str:
    return f"epoch-{epoch:03d}"


def checkpoint_name(text: str) -> str:
    """best, last, or an epoch as N or epoch-N (what --checkpoint accepts) -> the checkpoint's file stem."""
    text = str(text).strip()
    if text in ("best", "last"):
        return text
    number = text.removeprefix("epoch-")
    if number.isdigit() and int(number) > 0:
        return epoch_checkpoint(int(number))
    raise UserError(f"checkpoint must be best, last or an epoch number kept by keep_checkpoints (e.g. 10); got {text!r}")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint safely: weights_only=True refuses pickled code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; is this a cifarlab run folder?")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, foreign pickle, garbage: same advice
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint {path} is unreadable or unsafe ({first}); use another checkpoint or retrain") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise UserError(f"{path} is not a cifarlab checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def find_checkpoint(run_dir: str | Path, prefer: str = "best") -> Path:
    """The checkpoint file for `prefer` (best, last, or an epoch: 10, epoch-10); best falls back to last while
    a run has none (an unfinished run without a validation score yet), an epoch never does."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise UserError(f"run folder not found: {run.path}; pass a folder made by `cifarlab train`")
    prefer = checkpoint_name(prefer)
    if prefer.startswith("epoch-"):
        path = run.checkpoints / f"{prefer}.pt"
        if path.is_file():
            return path
        kept = run.kept_epochs()
        raise UserError(f"{run.path} kept no checkpoint of epoch {int(prefer[6:])} "
                        + (f"(kept: {', '.join(map(str, kept))})" if kept else "(it kept only best and last)")
                        + "; train with keep_checkpoints=N to keep every Nth epoch")
    for name in ([prefer, "last", "last.prev"] if prefer != "last" else ["last", "last.prev"]):
        p = run.checkpoints / f"{name}.pt"
        if p.is_file():
            return p
    raise UserError(f"{run.path} has no checkpoints/{prefer}.pt or last.pt; it is not a finished cifarlab run")
