"""The training loop: fit(config, run_dir) -> Summary.

Owns one flat loop (forward, loss, backward, accumulate, clip, step, schedule, EMA),
per-epoch validation, and what goes into each checkpoint. A run resumes from
checkpoints/last.pt at an epoch boundary and, on CPU, continues bit for bit as an
uninterrupted run would. Never parses arguments or draws plots.
"""

from __future__ import annotations

import functools
import math
import platform
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import distributed, runtime
from .augment import Augmenter, epoch_resolution
from .config import Config, to_yaml
from .data import Splits, load_splits
from .errors import UserError
from .evaluate import calibration_indices, evaluate, recalibrate_batchnorm
from .inference import ModelRecord, model_from_checkpoint
from .loader import DeviceLoader
from .models.registry import check_model
from .models.layers import apply_init
from .optim import build_optimizer, build_scheduler, steps_per_epoch
from .progress import Reporter
from .recipes import check_requirements, reported_result
from .runs import CHECKPOINT_FORMAT, RunDir, atomic_write_text, epoch_checkpoint, load_checkpoint, write_json


@dataclass
class Summary:
    run_dir: str
    best_val_acc: float | None
    best_epoch: int | None
    final_val_acc: float | None
    final_val_loss: float | None
    tta: str
    final_val_acc_tta: float | None
    final_train_loss: float
    epochs: int
    train_seconds: float
    data: str
    val_source: str
    num_train: int
    num_val: int
    classes: list
    model: str
    parameters: int
    device: str
    precision: str
    torch_version: str
    git_sha: str | None
    completed: bool = True
    recipe: str = ""
    reported: dict | None = None  # the seed report's own number, when the run started from a seed recipe
    # bn_recalibrate: the same weights scored with the running batch-norm statistics (the usual eval mode)
    best_val_acc_running_bn: float | None = None
    best_epoch_running_bn: int | None = None
    final_val_acc_running_bn: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class TrainingDiverged(UserError):
    pass


class StoppedEarly(Exception):
    """--stop-after-epochs N: the first N epochs of the full schedule are done and saved; resume for the rest."""

    def __init__(self, run_dir, epoch: int, epochs: int):
        self.run_dir, self.epoch, self.epochs = run_dir, epoch, epochs
        super().__init__(f"stopped after epoch {epoch} of {epochs} as asked (the schedule is the full run's); "
                         f"continue with `cifarlab train --resume {run_dir}`")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C honoured at an optimizer-step boundary, after last.pt got the epoch's progress."""


class StopRequest:
    """While training, the first Ctrl-C (SIGINT) asks the loop to stop after the current optimizer step
    (never half-way through one); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """What computed a checkpoint: cifarlab's commit (+dirty with uncommitted changes) and torch's version."""
    sha = _git_sha()
    if sha:
        try:
            dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "."], cwd=Path(__file__).parent,
                                   capture_output=True, timeout=5).returncode == 1
            sha = sha[:12] + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            sha = sha[:12]
    return {"cifarlab": sha, "torch": str(torch.__version__)}  # a plain str: weights_only loads refuse TorchVersion


def _code_change_note(before: dict | None) -> str | None:
    """One line when a run resumes under other code than wrote its checkpoint (None when the same or unknown)."""
    now = code_version()
    if not before or before == now:
        return None
    said = lambda c: f"cifarlab {c.get('cifarlab') or 'unknown'}, torch {c.get('torch')}"  # noqa: E731
    return (f"note: the checkpoint was written under {said(before)} and the run continues under {said(now)}: "
            "its remaining epochs may differ in the last bits from an uninterrupted run")


def training_loss(logits: torch.Tensor, y: torch.Tensor, smoothing: float, to: str = "all") -> torch.Tensor:
    """Mean cross-entropy against smoothed targets. to="all" is PyTorch's label_smoothing (target 1-s+s/C,
    others s/C); to="others" puts 1-s on the target and s/(C-1) on each other class, as report 000's loss."""
    if not smoothing or to == "all":
        return F.cross_entropy(logits, y, label_smoothing=smoothing)
    log_p = F.log_softmax(logits, dim=1)
    c = logits.shape[1]
    target = torch.full_like(log_p, smoothing / (c - 1)).scatter_(1, y[:, None], 1.0 - smoothing)
    return -(target * log_p).sum(dim=1).mean()


class _Trainer:
    """State of one training run; fit() drives it."""

    def __init__(self, cfg: Config, run: RunDir, reporter: Reporter, splits: Splits, device: torch.device,
                 ctx: distributed.DistContext):
        self.cfg = cfg
        self.run = run
        self.out = reporter
        self.splits = splits
        self.ctx = ctx
        self.device = device
        self.precision = runtime.resolve_precision(cfg.precision, self.device)
        runtime.set_threads(cfg.threads)
        if self.device.type == "cpu":
            runtime.keep_freed_cpu_memory()
        torch.manual_seed(cfg.seed)
        self.record = ModelRecord(cfg, tuple(splits.classes), splits.image_shape, tuple(splits.mean),
                                  tuple(splits.std))
        self.model = self.record.build()
        apply_init(self.model, cfg.init, cfg.init_layers)
        self.model = self.model.to(self.device)
        aug = Augmenter(cfg.augment, splits.mean, splits.std, channels_last=cfg.channels_last)
        if hasattr(self.model, "data_init"):
            self._data_init(aug)
        if ctx.enabled:
            distributed.convert_batchnorm(self.model)  # statistics over the global batch, as one process sees it
        if cfg.channels_last:
            self.model = runtime.to_channels_last(self.model)
        self.forward = self._wrap()
        self.ema = None
        if cfg.ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        self.train_loader = DeviceLoader(splits.train_x, splits.train_y, cfg.batch_size, self.device, aug,
                                         shuffle=True, augment=True, seed=cfg.seed, drop_last=cfg.drop_last,
                                         rank=ctx.rank, world_size=ctx.world_size)
        eval_batch = runtime.eval_batch_size(cfg.eval_batch_size, self.device)
        self.val_loader = DeviceLoader(splits.val_x, splits.val_y, eval_batch, self.device, aug,
                                       shuffle=False, augment=False)
        self.calibration_loader = self._calibration_loader(aug) if cfg.bn_recalibrate else None
        self.steps_per_epoch = steps_per_epoch(len(self.train_loader), cfg.accumulate_steps)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.per_step_schedule = not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.epoch = 0  # epochs completed
        self.best_val_acc: float | None = None
        self.best_epoch: int | None = None
        self.train_seconds = 0.0
        self.final_eval = None  # the last epoch's TTA evaluation, when it is also the best checkpoint's
        self.on_epoch = None  # callable(row) after each epoch's checkpoint
        self.tracker = None  # tracking.MlflowTracker on rank 0 when cfg.mlflow is set
        self.stop_after_epochs = 0  # > 0: stop (resumably) once this many epochs are done
        self.stop = None  # a StopRequest while fit() runs
        self.resume_batch = 0  # > 0 when resuming a checkpoint saved mid-epoch
        self.resume_partial = None

    def _data_init(self, aug: Augmenter, n: int = 5000) -> None:
        """Models with data-dependent init (e.g. fastnet's whitening stem) see a seeded sample of train."""
        g = torch.Generator().manual_seed(self.cfg.seed)
        pick = torch.randperm(len(self.splits.train_y), generator=g)[:n].numpy()
        x = torch.from_numpy(self.splits.train_x[pick]).to(self.device)
        self.model.data_init(aug(x))

    def _calibration_loader(self, aug: Augmenter) -> DeviceLoader:
        """A fixed seeded sample of training images, un-augmented, in random class order (a batch of one
        class would give that class's statistics), at the training batch size (what batch norm saw). Under
        DDP each process takes its share of every batch, as in training: the cross-rank batch norm then
        sees exactly the batches one process would."""
        pick = calibration_indices(len(self.splits.train_y), self.cfg.bn_recalibrate, self.cfg.seed)
        return DeviceLoader(self.splits.train_x[pick], self.splits.train_y[pick], self.cfg.batch_size, self.device,
                            aug, shuffle=False, augment=False, rank=self.ctx.rank, world_size=self.ctx.world_size)

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "rng": rng,
            "code": code_version(),
            **self.record.to_state(),
        }

    def restore(self, state: dict) -> None:
        if ModelRecord.from_state(state).classes != self.record.classes:
            raise UserError("the checkpoint's classes differ from the data's; resume with the data the run started with")
        try:
            self.model.load_state_dict(state["model"])
            if self.ema is not None and state.get("ema"):
                self.ema.load_state_dict(state["ema"])
        except RuntimeError as err:
            raise UserError(f"checkpoint does not fit model '{self.cfg.model}': {str(err).splitlines()[0][:120]}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.best_val_acc = state["best_val_acc"]
        self.best_epoch = state["best_epoch"]
        self.train_seconds = float(state["train_seconds"])
        self.resume_batch = int(state.get("batch", 0))
        self.resume_partial = state.get("partial")
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)

    def _wrap(self):
        """The callable that runs the model: DDP across ranks, torch.compile if asked."""
        forward = self.model
        if self.ctx.enabled:
            import inspect

            from torch.nn.parallel import DistributedDataParallel

            # buffers (batch-norm running stats) stay equal across ranks by construction: no per-step broadcast
            no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                       inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False})
            forward = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda"
                                              else None, **no_sync)
        return torch.compile(forward) if self.cfg.compile else forward

    # ------------------------------------------------------------ one epoch
    def train_epoch(self) -> dict:
        cfg, model = self.cfg, self.model
        model.train()
        start_epoch = getattr(model, "start_epoch", None)
        if start_epoch is not None and start_epoch(self.epoch) and self.ctx.enabled:
            self.forward = self._wrap()  # DDP fixes the parameters it reduces when it is built
        # a run resumed mid-epoch (after Ctrl-C) picks up its partial sums and batch position
        part = self.resume_partial or {}
        start_batch = self.resume_batch
        self.resume_partial, self.resume_batch = None, 0
        loss_sum = torch.tensor(part.get("loss_sum", 0.0), dtype=torch.float64, device=self.device)
        correct = torch.tensor(part.get("correct", 0), dtype=torch.long, device=self.device)
        seen = int(part.get("seen", 0))
        skipped = int(part.get("skipped", 0))
        n_batches = len(self.train_loader)
        lr_at_start = part.get("lr", self.optimizer.param_groups[0]["lr"])
        t0 = time.perf_counter() - float(part.get("seconds", 0.0))
        self.out.start_epoch(self.epoch + 1, cfg.epochs, n_batches * cfg.batch_size)
        for i, (x, y) in enumerate(self.train_loader.epoch(self.epoch, start_batch), start=start_batch):
            result = self._forward_backward(x, y, i, may_skip=skipped < cfg.skip_nonfinite_batches)
            if result is None:
                skipped += 1
            else:
                loss_sum += result[0].double() * len(y)
                correct += result[1]
                seen += len(y)
            step_done = (i + 1) % cfg.accumulate_steps == 0 or i + 1 == n_batches
            if step_done:
                self._optimizer_step()
            self.out.advance(len(y), seen)
            if step_done and i + 1 < n_batches and self._stop_requested():
                partial = {"loss_sum": float(loss_sum.item()), "correct": int(correct.item()), "seen": seen,
                           "skipped": skipped, "lr": lr_at_start, "seconds": time.perf_counter() - t0}
                self._save_interrupted(i + 1, partial)
        seconds = time.perf_counter() - t0
        total_loss, total_correct, seen = self.ctx.sum([loss_sum.item(), correct.item(), seen], self.device)
        row = {"lr": lr_at_start, "train_images": int(seen), "train_loss": total_loss / max(seen, 1),
               "train_acc": total_correct / max(seen, 1), "seconds": seconds,
               "images_per_second": seen / max(seconds, 1e-9)}
        if cfg.skip_nonfinite_batches:
            row["skipped_batches"] = skipped
        return row

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, batch: int, may_skip: bool):
        """One micro-batch: forward, loss, backward (gradients accumulate until _optimizer_step).
        Returns (loss, number correct), or None for a non-finite loss that may be skipped: such a batch
        adds no gradient and leaves no trace (batch-norm statistics restored)."""
        cfg, model = self.cfg, self.model
        saved_buffers = [b.clone() for b in model.buffers()] if cfg.skip_nonfinite_batches else None
        with runtime.autocast(self.device, self.precision):
            logits = self.forward(x)
        loss = training_loss(logits.float(), y, cfg.label_smoothing, cfg.label_smoothing_to)
        bad = not torch.isfinite(loss)
        if self.ctx.enabled:
            bad = self.ctx.any(bad, self.device)  # every rank stops at the same step; none waits forever
        if bad and may_skip:
            with torch.no_grad():
                for b, before in zip(model.buffers(), saved_buffers):
                    b.copy_(before)
            return None
        if bad:
            last = self.run.checkpoints / "last.pt"
            kept = f"the last good checkpoint {last} is kept" if last.is_file() else "no epoch had finished"
            raise TrainingDiverged(f"loss became {loss.item()} at epoch {self.epoch + 1}, batch {batch + 1} ({kept}); "
                                   "lower optim.lr, set clip_grad_norm, or allow skip_nonfinite_batches=N")
        self.scaler.scale(loss / cfg.accumulate_steps).backward()
        return loss.detach(), (logits.argmax(1) == y).sum()

    def _optimizer_step(self) -> None:
        """Clip, step, zero the gradients, advance a per-step schedule, update the EMA."""
        if self.cfg.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.per_step_schedule:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _stop_requested(self) -> bool:
        flag = self.stop is not None and self.stop.requested
        return self.ctx.any(flag, self.device) if self.ctx.enabled else flag

    def _save_interrupted(self, batch: int, partial: dict) -> None:
        """Ctrl-C: keep the progress of this epoch (weights after `batch` batches) in last.pt, then stop."""
        if self.ctx.is_main:
            state = self.state()
            state["batch"], state["partial"] = batch, partial
            self.run.save_checkpoint(state, "last")
        raise RunInterrupted(f"interrupted at epoch {self.epoch + 1}, batch {batch}/{len(self.train_loader)}; "
                             f"progress saved in {self.run.path}")

    def validate(self, tta: str = "none", running_stats: dict | None = None):
        """Per-epoch validation is plain (cheap); the configured TTA runs once, after the last epoch.

        With bn_recalibrate, the weights are first scored with the running statistics training left (what a
        report without precise BN measured; its loss and accuracy go into `running_stats` when given), then
        the statistics are recomputed and the weights scored again: that is the result."""
        if self.val_loader.num_images == 0:
            return None
        model = self.ema.module if self.ema is not None else self.model
        if self.calibration_loader is not None:
            if running_stats is not None:
                before = evaluate(model, self.val_loader, self.device, self.precision)
                running_stats.update(val_loss_running_bn=before.loss, val_acc_running_bn=before.accuracy)
                if before.nonfinite:
                    running_stats["val_nonfinite_running_bn"] = before.nonfinite
            # in place, so checkpoints keep the statistics evaluated with; training (batch statistics) is
            # unaffected, and the running averages forget them within ~50 steps at momentum 0.1
            recalibrate_batchnorm(model, self.calibration_loader.epoch(0), self.device, self.precision)
        return evaluate(model, self.val_loader, self.device, self.precision, tta, self.cfg.eval_bn_stats)

    def _seconds_left(self, train_seconds: float, val_seconds: float) -> float:
        """The rest of the run at this epoch's pace, scaled by (image size)^2 for progressive resizing."""
        full = self.splits.train_x.shape[1]
        size = [epoch_resolution(self.cfg.augment, e) or full for e in range(self.cfg.epochs)]
        last = size[self.epoch - 1]
        return sum(train_seconds * (size[e] / last) ** 2 + val_seconds for e in range(self.epoch, self.cfg.epochs))

    def fit(self) -> Summary:
        cfg = self.cfg
        tb = None
        if cfg.tensorboard and self.ctx.is_main:
            from .tensorboard import TensorBoardLog

            tb = TensorBoardLog(self.run.path / "tensorboard", resumed_after_epoch=self.epoch)
        try:
            with StopRequest() as self.stop:
                return self._fit(tb)
        finally:
            self.stop = None
            if tb is not None:
                tb.close()

    def _keeps(self, epoch: int) -> bool:
        """Whether keep_checkpoints keeps this epoch's checkpoint (epoch-NNN.pt) beside best and last."""
        return epoch > 0 and self.cfg.keep_checkpoints > 0 and epoch % self.cfg.keep_checkpoints == 0

    def _fit(self, tb) -> Summary:
        cfg = self.cfg
        last = None
        if (self._keeps(self.epoch) and self.ctx.is_main and not self.resume_batch
                and self.epoch not in self.run.kept_epochs()):
            # resumed at an epoch boundary without its epoch-NNN.pt (a kill after last.pt, or keeping turned on now)
            self.run.save_checkpoint(self.state(), epoch_checkpoint(self.epoch))
        while self.epoch < cfg.epochs:
            stats = self.train_epoch()
            t_val = time.perf_counter()
            running_bn = {}
            val = self.validate(running_stats=running_bn)
            val_seconds = time.perf_counter() - t_val
            self.epoch += 1
            self.train_seconds += stats["seconds"]
            row = {"epoch": self.epoch, **stats,
                   "val_loss": val.loss if val else None, "val_acc": val.accuracy if val else None, **running_bn}
            if val is not None and val.nonfinite:
                row["val_nonfinite"] = val.nonfinite
            if not self.per_step_schedule:
                monitor = self.cfg.schedule.plateau_monitor
                value = row[monitor] if row.get(monitor) is not None else row["train_loss"]
                self.scheduler.step(value)
            best = val is not None and (self.best_val_acc is None or val.accuracy > self.best_val_acc)
            if best:
                self.best_val_acc, self.best_epoch = val.accuracy, self.epoch
            if self.ctx.is_main:  # one writer: rank 0 owns the run folder
                state = self.state()
                # metrics first, then checkpoint: a kill between the two redoes this epoch and rewrites its line
                self.run.append_metrics(row)
                if best or val is None:
                    self.run.save_checkpoint(state, "best")
                self.run.save_checkpoint(state, "last")
                if self._keeps(self.epoch):
                    self.run.save_checkpoint(state, epoch_checkpoint(self.epoch))
            self.out.end_epoch(row, cfg.epochs, best, self._seconds_left(stats["seconds"], val_seconds))
            if tb is not None:
                tb.log_epoch(row)
            if self.tracker is not None:
                self.tracker.log_epoch(row)
            if self.on_epoch is not None:
                self.on_epoch(row)  # e.g. Optuna's pruning: may raise to stop the run here (checkpoint kept)
            last = row
            if self.stop_after_epochs and self.stop_after_epochs <= self.epoch < cfg.epochs:
                raise StoppedEarly(self.run.path, self.epoch, cfg.epochs)
        final_tta = self.validate(cfg.tta) if cfg.tta != "none" else None
        # the report evaluates best.pt with TTA; when the last epoch was the best, that is this very result
        self.final_eval = final_tta if self.best_epoch == self.epoch else None
        if final_tta is not None:
            self.out.info(f"final val_acc with tta={cfg.tta}: {final_tta.accuracy:.4f}")
            if tb is not None:
                tb.log_final(self.epoch, cfg.tta, final_tta.accuracy)
        return self.summary(last, final_tta.accuracy if final_tta else None)

    def write_report(self) -> None:
        """Plots and report.html from the best checkpoint's view of the validation split."""
        from .report import write_report

        result = self.final_eval
        if result is None and self.val_loader.num_images:
            best = load_checkpoint(self.run.checkpoints / "best.pt", map_location=self.device)
            model = model_from_checkpoint(best, self.device, self.cfg.channels_last)  # EMA weights if kept
            result = evaluate(model, self.val_loader, self.device, self.precision, self.cfg.tta,
                              self.cfg.eval_bn_stats)
        write_report(self.run.path, self.splits.val_x, result, list(self.splits.classes), seed=self.cfg.seed)

    def summary(self, last: dict | None, final_val_acc_tta: float | None) -> Summary:
        rows = self.run.read_metrics()
        last = last or (rows[-1] if rows else {})
        running = [(r["val_acc_running_bn"], r["epoch"]) for r in rows if r.get("val_acc_running_bn") is not None]
        best_running = max(running, key=lambda ae: ae[0]) if running else (None, None)  # first epoch on ties
        return Summary(
            run_dir=str(self.run.path), best_val_acc=self.best_val_acc, best_epoch=self.best_epoch,
            final_val_acc=last.get("val_acc"), final_val_loss=last.get("val_loss"),
            tta=self.cfg.tta, final_val_acc_tta=final_val_acc_tta,
            final_train_loss=math.nan if last.get("train_loss") is None else last["train_loss"], epochs=self.epoch,
            train_seconds=round(self.train_seconds, 3), data=self.cfg.data.spec, val_source=self.splits.val_source,
            num_train=len(self.splits.train_y), num_val=len(self.splits.val_y), classes=list(self.splits.classes),
            model=self.cfg.model, parameters=sum(p.numel() for p in self.model.parameters()),
            device=_device_label(self.device),
            precision=self.precision, torch_version=torch.__version__, git_sha=_git_sha(),
            recipe=self.cfg.recipe, reported=reported.as_dict() if (reported := reported_result(self.cfg)) else None,
            best_val_acc_running_bn=best_running[0], best_epoch_running_bn=best_running[1],
            final_val_acc_running_bn=last.get("val_acc_running_bn"),
        )


def fit(cfg: Config, run_dir: str | Path, *, resume: bool = False, reporter: Reporter | None = None,
        allow_existing: bool = False, on_epoch=None, stop_after_epochs: int = 0) -> Summary:
    """Train `cfg` into `run_dir` (or continue it with resume=True) and return the Summary.

    The folder gets config.yaml, metrics.jsonl, checkpoints/{last,best}.pt and
    summary.json, each written atomically. Under torchrun every process calls this;
    rank 0 alone writes the folder. stop_after_epochs=N ends the run, resumable, after
    its first N epochs (raising StoppedEarly), with the schedule of the full run.
    """
    check_requirements(cfg)
    check_model(cfg.model, cfg.model_args)  # a typo in model= fails now, not after the data has loaded
    if stop_after_epochs < 0:
        raise UserError(f"--stop-after-epochs must be a positive number of epochs; got {stop_after_epochs}")
    ctx = distributed.from_environment()
    device = runtime.resolve_device(cfg.device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    distributed.check_batch(ctx, cfg.batch_size, cfg.eval_batch_size)
    distributed.init(ctx, device)
    out = reporter or Reporter()
    if not ctx.is_main:
        out = Reporter(quiet=True)
    run = RunDir(run_dir)
    try:
        return _fit_locked(cfg, run, out, resume, allow_existing, device, ctx, on_epoch, stop_after_epochs)
    finally:
        ctx.shutdown()


def _fit_locked(cfg, run, out, resume, allow_existing, device, ctx, on_epoch, stop_after_epochs) -> Summary:
    problem = None
    if ctx.is_main:
        try:
            if not (resume or allow_existing) and run.path.exists() and any(run.path.iterdir()):
                raise UserError(f"run folder {run.path} already exists and is not empty; resume it with "
                                f"`cifarlab train --resume {run.path}` or choose another --out")
            run.lock()
        except UserError as err:
            problem = err
    if ctx.any(problem is not None, device):
        raise problem or UserError(f"rank 0 could not open the run folder {run.path}; see its message")
    try:
        t_data = time.perf_counter()
        if not ctx.is_main:
            ctx.barrier()  # rank 0 decodes (and caches) first; the others then read the cache
        splits = load_splits(cfg.data)
        if ctx.is_main:
            ctx.barrier()
        if len(splits.classes) < 2:
            raise UserError(f"--data {cfg.data.spec} has one class ({splits.classes[0]}): a classifier needs two or "
                            "more; lay the images out as PATH/<class>/* with a folder per class")
        for note in splits.notes:
            out.info(f"note: {note}")
        out.info(f"data: {cfg.data.spec}: {len(splits.train_y):,} train / {len(splits.val_y):,} val "
                 f"({splits.val_source}), {len(splits.classes)} classes, {'x'.join(map(str, splits.image_shape))}, "
                 f"loaded in {time.perf_counter() - t_data:.1f}s")
        trainer = _Trainer(cfg, run, out, splits, device, ctx)
        trainer.on_epoch = on_epoch
        trainer.stop_after_epochs = stop_after_epochs
        if resume:
            state = run.load_resume_checkpoint(map_location=trainer.device, log=out.info)
            trainer.restore(state)
            if ctx.is_main:
                run.keep_metrics_through(trainer.epoch)
            out.info(f"resuming {run.path} after epoch {trainer.epoch}/{cfg.epochs}")
            if note := _code_change_note(state.get("code")):
                out.info(note)
        elif ctx.is_main:
            atomic_write_text(run.config_file, to_yaml(cfg))
        params = sum(p.numel() for p in trainer.model.parameters())
        procs = f" x {ctx.world_size} processes" if ctx.enabled else ""
        out.info(f"model: {cfg.model} ({params / 1e6:.2f}M parameters) on {trainer.device}{procs}, {trainer.precision}"
                 f"{', compiled' if cfg.compile else ''}; run folder: {run.path}")
        if cfg.mlflow and ctx.is_main:
            trainer.tracker = _start_tracker(cfg, run, out, trainer)
        try:
            summary = trainer.fit()
        except BaseException as err:
            if trainer.tracker is not None:  # stopped or interrupted runs can be resumed: KILLED, not FAILED
                resumable = isinstance(err, (StoppedEarly, KeyboardInterrupt, RunInterrupted))
                trainer.tracker.finish(None, status="KILLED" if resumable else "FAILED")
            raise
        if ctx.is_main:
            write_json(run.summary_file, summary.as_dict())
            trainer.write_report()
            out.info(f"report: {run.path / 'report.html'}")
            if trainer.tracker is not None:
                trainer.tracker.finish(summary.as_dict())
        return summary
    finally:
        if ctx.is_main:
            run.unlock()
            _remove_if_empty(run.path)


def _device_label(device: torch.device) -> str:
    """'cuda:0 (NVIDIA H200)' or 'cpu (x86_64)': what summary.json and the MLflow tag call the device."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return f"{device} ({name})"


def _start_tracker(cfg: Config, run: RunDir, out: Reporter, trainer: "_Trainer"):
    """The run's MLflow mirror (tracking.py), started or continued; a store that fails is said and skipped."""
    from .tracking import MlflowTracker, run_tags

    tracker = MlflowTracker(run.path, cfg.mlflow, say=out.info, checkpoints=cfg.mlflow_checkpoints)
    reported = reported_result(cfg)
    tracker.start(cfg, run_tags(cfg, {"git_sha": _git_sha(), "torch_version": torch.__version__,
                                      "device": _device_label(trainer.device),
                                      "reported": reported.as_dict() if reported else None}))
    return tracker


def _remove_if_empty(path: Path) -> None:
    """A run that failed before writing anything (bad data path, ...) leaves no empty folder behind."""
    try:
        path.rmdir()  # only succeeds when empty
    except OSError:
        pass
