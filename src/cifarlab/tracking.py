"""MLflow tracking of a run (`--mlflow [URI]`, config key `mlflow`): params, per-epoch metrics, tags, artifacts.

Owns the mirror of a run folder in an MLflow tracking store: the flattened config as params, every
epoch's metrics (step = epoch), tags (recipe, model, data, git sha, torch, device, the seed report's
number), and at the end the summary's numbers and the run's small files as artifacts. The run folder
stays the record of truth: a tracking store that cannot be reached is said once and the run goes on,
and `cifarlab track RUN` uploads a run folder later. RUN_DIR/mlflow.json remembers which MLflow run
mirrors the folder, so a resumed run continues the same MLflow run. Never computes metrics.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

from .config import format_value, nested_to_dotted
from .errors import UserError

EXPERIMENT = "cifarlab"
STATE_FILE = "mlflow.json"
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_second", "seconds",
                 "val_loss_running_bn", "val_acc_running_bn")
SUMMARY_METRICS = ("best_val_acc", "best_epoch", "final_val_acc", "final_val_loss", "final_val_acc_tta",
                   "final_train_loss", "train_seconds")
ARTIFACTS = ("config.yaml", "summary.json", "metrics.jsonl", "report.html")


# the MLflow run of the sweep / ablation / tuning study whose runs are being trained (their parent)
# as (setting, tracking URI, run id): children given the same setting go to the parent's store
_PARENT: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar("cifarlab_mlflow_parent",
                                                                                     default=None)


def parent_tag(uri: str) -> dict:
    """The tag that files a run under the experiment being run, when it goes to the same store."""
    parent = _PARENT.get()
    return {"mlflow.parentRunId": parent[2]} if parent and parent[1] == uri else {}


@contextlib.contextmanager
def experiment_run(folder: Path, setting: str | None, tags: dict, say=print):
    """A parent MLflow run for an experiment folder (sweep, ablation, tuning study); the runs trained inside
    the block become its children. No-op when `setting` is empty. Workers sharing the folder share it."""
    if not setting:
        yield None
        return
    tracker = MlflowTracker(folder, setting, say=say)
    tracker._safely(tracker._start_parent, tags)
    token = _PARENT.set((setting, tracker.uri, tracker.run_id)) if tracker.run_id else None
    status = "FINISHED"
    try:
        yield tracker
    except BaseException:
        status = "KILLED"
        raise
    finally:
        if token is not None:
            _PARENT.reset(token)
        if tracker.run_id:  # the client may have failed meanwhile: _safely then does nothing
            tracker._safely(lambda: tracker.client.set_terminated(tracker.run_id, status))


def tracking_uri(setting: str, run_path: Path) -> str:
    """'local' (what a bare --mlflow means) -> a SQLite store beside the run folders; else the URI as given."""
    if setting == "local":
        return f"sqlite:///{(Path(run_path).resolve().parent / 'mlflow.db')}"
    return setting


def _mlflow():
    import logging

    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError("MLflow tracking needs mlflow: pip install 'cifarlab[mlflow]'") from None
    for name in ("mlflow", "alembic"):  # their INFO lines (schema migrations) would interleave with the epochs
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient


def _check_reachable(uri: str) -> None:
    """Fail in seconds, not after the HTTP client's minutes of retries, when a tracking server is down."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        with socket.create_connection((parsed.hostname, port), timeout=5):
            pass


class MlflowTracker:
    """One run folder's MLflow run. After a failure every call is a no-op (said once, in one line)."""

    def __init__(self, run_path: Path, setting: str, say=print, checkpoints: bool = False):
        self.run_path = Path(run_path)
        self.checkpoints = checkpoints
        parent = _PARENT.get()
        # 'local' inside a sweep means the sweep's store (beside its folder), not one inside the sweep folder
        self.uri = parent[1] if parent and parent[0] == setting else tracking_uri(setting, self.run_path)
        self.say = say
        self.client = None
        self.run_id = None
        self._said = False
        client_cls = _mlflow()
        try:
            _check_reachable(self.uri)
            self.client = client_cls(tracking_uri=self.uri)
        except Exception as err:  # noqa: BLE001 - any failure of the store must not stop training
            self._failed(err)

    # ------------------------------------------------------------ helpers
    def _failed(self, err: BaseException) -> None:
        if not self._said:
            self._said = True
            self.say(f"mlflow: {self.uri} failed ({str(err).splitlines()[0][:160] if str(err) else type(err).__name__}); "
                     f"the run goes on and its folder keeps everything: upload it later with "
                     f"`cifarlab track {self.run_path} --mlflow {self.uri}`")
        self.client = None

    def _safely(self, fn, *args, **kwargs):
        if self.client is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            self._failed(err)
            return None

    def _artifact_location(self) -> str | None:
        """Beside a SQLite store's file: MLflow's own default is ./mlruns in whatever folder the command ran in."""
        parsed = urlparse(self.uri)
        if parsed.scheme == "sqlite":
            db = Path(self.uri[len("sqlite:///"):])
            return (db.parent / "mlflow-artifacts").resolve().as_uri()
        return None  # a tracking server decides (its --artifacts-destination)

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(EXPERIMENT, artifact_location=self._artifact_location())
        except Exception:  # noqa: BLE001 - another process created it first
            return self.client.get_experiment_by_name(EXPERIMENT).experiment_id

    def _known_run(self) -> str | None:
        """The MLflow run this folder was mirrored to before, if it lives in this store."""
        state_file = self.run_path / STATE_FILE
        if not state_file.is_file():
            return None
        state = json.loads(state_file.read_text())
        if state.get("tracking_uri") != self.uri:
            return None
        try:
            return self.client.get_run(state["run_id"]).info.run_id
        except Exception:  # noqa: BLE001 - deleted, or another store
            return None

    # ------------------------------------------------------------ the run
    def start(self, cfg, tags: dict) -> None:
        """Continue this folder's MLflow run, or create one with the config as params."""
        self._safely(self._start, cfg, tags)

    def _open_run(self, tags: dict) -> bool:
        """Continue this folder's MLflow run or create one, and remember it in RUN_DIR/mlflow.json; True when
        created."""
        from mlflow.entities import RunTag

        from .runs import atomic_write_text

        run_id = self._known_run()
        tags = {k: str(v) for k, v in {**tags, **parent_tag(self.uri)}.items() if v is not None}
        created = run_id is None
        if created:
            run_id = self.client.create_run(self._experiment_id(), run_name=self.run_path.name, tags=tags).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.run_id = run_id
        atomic_write_text(self.run_path / STATE_FILE, json.dumps({"tracking_uri": self.uri, "run_id": run_id}) + "\n")
        return created

    def _start(self, cfg, tags: dict) -> None:
        from mlflow.entities import Param

        if self._open_run(tags):
            params = [Param(k, format_value(v)[:6000]) for k, v in sorted(nested_to_dotted(cfg.to_dict()).items())]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        self._send_missing_epochs()  # e.g. the epoch whose checkpoint landed just before a Ctrl-C
        self.say(f"mlflow: run {self.run_id} in {self.uri}")

    def _send_missing_epochs(self) -> int:
        """Epochs in the folder's metrics.jsonl that the MLflow run lacks; returns how many were sent."""
        from .runs import RunDir

        done = {m.step for m in self.client.get_metric_history(self.run_id, "val_acc")}
        done |= {m.step for m in self.client.get_metric_history(self.run_id, "train_loss")}
        rows = [r for r in RunDir(self.run_path).read_metrics() if int(r["epoch"]) not in done]
        self._log_rows(rows)
        return len(rows)

    def _start_parent(self, tags: dict) -> None:
        self._open_run(tags)
        self.say(f"mlflow: experiment run {self.run_id} in {self.uri}")

    def log_epoch(self, row: dict) -> None:
        self._safely(self._log_rows, [row])

    def _log_rows(self, rows: list[dict]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(r[k]), now, int(r["epoch"])) for r in rows for k in EPOCH_METRICS
                   if r.get(k) is not None]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def finish(self, summary: dict | None, status: str = "FINISHED") -> None:
        """The summary's numbers and the run's small files, then the run's end state."""
        if self.run_id is None:
            return
        self._safely(self._finish, summary or {}, status)

    def _finish(self, summary: dict, status: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(summary.get("epochs") or 0)
        metrics = [Metric(k, float(summary[k]), now, step) for k in SUMMARY_METRICS
                   if isinstance(summary.get(k), (int, float))]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        for name in ARTIFACTS:
            if (self.run_path / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_path / name))
        plots = sorted(self.run_path.glob("*.png"))
        for p in plots:
            self.client.log_artifact(self.run_id, str(p), artifact_path="plots")
        best = self.run_path / "checkpoints" / "best.pt"
        if self.checkpoints and best.is_file():
            self.client.log_artifact(self.run_id, str(best), artifact_path="checkpoints")
        self.client.set_terminated(self.run_id, status)
        if status == "FINISHED":
            self.say(f"mlflow: run {self.run_id} in {self.uri}: mlflow ui --backend-store-uri {self.uri}"
                     if self.uri.startswith("sqlite") else f"mlflow: run {self.run_id} at {self.uri}")


def run_tags(cfg, summary_like: dict) -> dict:
    """Tags that say what a run is: recipe, model, data, versions, device, the report's number."""
    reported = summary_like.get("reported") or {}
    return {"recipe": cfg.recipe or None, "model": cfg.model, "data": cfg.data.spec,
            "git_sha": summary_like.get("git_sha"), "torch": summary_like.get("torch_version"),
            "device": summary_like.get("device"),
            "reported": f"{reported['value']:.4f} ({reported.get('metric', '')})" if reported else None}


def track_run(run_dir: str | Path, setting: str, say=print) -> str | None:
    """Upload (or complete) a run folder in MLflow: `cifarlab track RUN`. Returns the MLflow run id."""
    from .config import from_dict, load_yaml
    from .runs import RunDir

    run = RunDir(run_dir)
    if not run.config_file.is_file():
        raise UserError(f"{run.path} has no config.yaml; `cifarlab track` takes a folder made by `cifarlab train`")
    cfg = from_dict(load_yaml(run.config_file))
    summary = json.loads(run.summary_file.read_text()) if run.summary_file.is_file() else {}
    tracker = MlflowTracker(run.path, setting, say=say)
    if tracker.client is None:
        raise UserError(f"cannot reach MLflow at {tracker.uri}; nothing was uploaded")
    tracker.start(cfg, run_tags(cfg, summary))
    if tracker.run_id is None:
        raise UserError(f"MLflow at {tracker.uri} refused the run; nothing was uploaded")
    tracker.finish(summary if summary else None, status="FINISHED" if summary else "KILLED")
    if tracker.client is None:
        raise UserError(f"the upload to {tracker.uri} broke off; run `cifarlab track {run.path}` again")
    say(f"tracked {run.path} as MLflow run {tracker.run_id} in {tracker.uri}")
    return tracker.run_id
