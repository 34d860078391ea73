"""TensorBoard scalars of a run (`--tensorboard`): one point per epoch under RUN_DIR/tensorboard.

Owns the tag names and the optional import; metrics.jsonl stays the record of truth,
this only mirrors it for people who live in TensorBoard. Never computes metrics.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

# metrics.jsonl key -> TensorBoard tag (grouped so train/val share a chart)
TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train",
        "val_acc": "accuracy/val", "lr": "lr", "images_per_second": "speed/images_per_second",
        "val_loss_running_bn": "loss/val_running_bn", "val_acc_running_bn": "accuracy/val_running_bn"}


class TensorBoardLog:
    def __init__(self, log_dir: str | Path, resumed_after_epoch: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard package: pip install 'cifarlab[tensorboard]'") from None
        # purge_step: on resume, points of epochs that will be redone are dropped from the view
        self.writer = SummaryWriter(str(log_dir), purge_step=resumed_after_epoch + 1 if resumed_after_epoch else None)

    def log_epoch(self, row: dict) -> None:
        for key, tag in TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, float(row[key]), int(row["epoch"]))
        self.writer.flush()

    def log_final(self, epoch: int, tta: str, accuracy: float) -> None:
        self.writer.add_scalar(f"accuracy/val_tta_{tta}", float(accuracy), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
