"""The reference `fast` has to beat: airbench94's training recipe, ported to run here, on cifarlab's split.

A plain re-implementation (not a copy) of the published airbench94 record script's algorithm
(Keller Jordan, 2024): whitened 2x2 stem whose bias trains 3 epochs, three conv groups with dirac
init and scale-free BN (momentum 0.4), 1/9 head scale, summed label-smoothed (0.2) cross-entropy,
Nesterov SGD at lr 11.5 / weight decay 0.0153 per 1024 images (decoupled), BN biases at 64x lr,
a triangular schedule 0.2 -> 1 (at 23%) -> 0.07 over 9.9 epochs, lookahead every 5 steps from epoch 4,
alternating flip + 2 px reflect-padded translation, and flip+translate test-time augmentation.
On this CPU it runs in bf16 autocast with channels_last, as the issue's reference measurement did.

It trains on the same train/validation split `cifarlab train` makes (data.val_fraction,
data.split_seed), times every epoch (validation excluded) and writes RUN_DIR/metrics.jsonl in
cifarlab's format, so `benchmarks/time_to_accuracy.py` can draw both curves on one plot:

    python benchmarks/airbench_port.py ../shared/datasets/cifar10-jpeg/train --out runs/airbench94
    cifarlab train --recipe fast --data ../shared/datasets/cifar10-jpeg/train --out runs/fast
    python benchmarks/time_to_accuracy.py runs/fast runs/airbench94
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.config import DataConfig
from cifarlab.data import load_splits

HYP = {"epochs": 9.9, "batch_size": 1024, "lr": 11.5, "momentum": 0.85, "weight_decay": 0.0153,
       "bias_scaler": 64.0, "label_smoothing": 0.2, "whiten_bias_epochs": 3, "lookahead_start_epoch": 3,
       "translate": 2,
       "widths": (64, 256, 256), "bn_momentum": 0.4, "scaling_factor": 1 / 9}


class _BN(nn.BatchNorm2d):
    def __init__(self, c: int):
        super().__init__(c, momentum=HYP["bn_momentum"], eps=1e-12)
        self.weight.requires_grad_(False)


class _Conv(nn.Conv2d):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 3, padding="same", bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight[:c_in])  # identity on the first c_in filters: an implicit residual


class _Group(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1, self.norm1, self.conv2, self.norm2 = _Conv(c_in, c_out), _BN(c_out), _Conv(c_out, c_out), _BN(c_out)

    def forward(self, x):
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        w = HYP["widths"]
        self.groups = nn.Sequential(_Group(24, w[0]), _Group(w[0], w[1]), _Group(w[1], w[2]))
        self.head = nn.Linear(w[2], 10, bias=False)

    def forward(self, x, whiten_bias_grad: bool = True):
        b = self.whiten.bias if whiten_bias_grad else self.whiten.bias.detach()
        x = F.gelu(F.conv2d(x, self.whiten.weight, b))
        x = self.groups(x)
        return self.head(F.adaptive_max_pool2d(x, 1).flatten(1)) * HYP["scaling_factor"]

    @torch.no_grad()
    def init_whiten(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        patches = x.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 3, 2, 2).float()
        flat = patches.view(len(patches), -1)
        cov = flat.T @ flat / len(flat)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        filters = (eigvecs.T / torch.sqrt(eigvals + eps)[:, None]).view(12, 3, 2, 2)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))
        self.whiten.weight.requires_grad_(False)


def _translate(x: torch.Tensor, px: int, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to px in each axis, reflect-padded (airbench's batch_crop).

    The shifts come from a CPU generator (the same on every device), then move to x's device."""
    n, _, h, w = x.shape
    padded = F.pad(x, (px,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * px + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * px + 1, (n,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, x.shape[1], h, w + 2 * px)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def _tta_logits(net: AirNet, x: torch.Tensor) -> torch.Tensor:
    """airbench94's tta_level 2: mirror x (identity + 0.25 each for 1 px up-left and down-right shifts)."""
    def both(v):
        return net(v) + net(v.flip(-1))
    padded = F.pad(x, (1,) * 4, mode="reflect")
    up_left, down_right = padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]
    return 0.5 * both(x) + 0.25 * both(up_left) + 0.25 * both(down_right)


@torch.no_grad()
def evaluate(net: AirNet, x: torch.Tensor, y: torch.Tensor, tta: bool, dtype) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(x), 2000):
        xb = x[i:i + 2000].contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = _tta_logits(net, xb) if tta else net(xb)
        correct += (logits.argmax(1) == y[i:i + 2000]).sum().item()
    net.train()
    return correct / len(x)


def train(args) -> None:
    dev = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.precision]
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    root = {"root": str(args.data_root)} if args.data_root else {}
    s = load_splits(DataConfig(spec=str(args.data), val_fraction=args.val_fraction, split_seed=args.split_seed, **root))
    mean, std = torch.tensor(s.mean).view(1, 3, 1, 1), torch.tensor(s.std).view(1, 3, 1, 1)

    def tensor(a):
        return ((torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255 - mean) / std).to(dev)
    train_x, train_y = tensor(s.train_x), torch.from_numpy(s.train_y).long().to(dev)
    val_x, val_y = tensor(s.val_x), torch.from_numpy(s.val_y).long().to(dev)
    print(f"data: {len(train_x):,} train / {len(val_x):,} val, loaded in {time.perf_counter() - t0:.1f}s", flush=True)

    bs, mom = HYP["batch_size"], HYP["momentum"]
    net = AirNet().to(dev).to(memory_format=torch.channels_last)
    net.init_whiten(train_x[:5000])
    kilostep = 1024 * (1 + 1 / (1 - mom))  # airbench's conversion of its decoupled lr / wd to PyTorch SGD's
    lr, wd = HYP["lr"] / kilostep, HYP["weight_decay"] * bs / kilostep
    biases = [p for n, p in net.named_parameters() if p.requires_grad and "norm" in n]
    others = [p for n, p in net.named_parameters() if p.requires_grad and "norm" not in n]
    # SGD multiplies weight_decay by the lr: dividing by it makes every group decay by wd per step (at peak lr)
    lr_bias = lr * HYP["bias_scaler"]
    opt = torch.optim.SGD([{"params": biases, "lr": lr_bias, "weight_decay": wd / lr_bias},
                           {"params": others, "lr": lr, "weight_decay": wd / lr}], momentum=mom, nesterov=True)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    if len(train_x) < bs:
        raise SystemExit(f"airbench_port: {len(train_x)} training images, fewer than one {bs}-image batch")
    steps_per_epoch = len(train_x) // bs  # airbench drops the last partial batch
    total = math.ceil(steps_per_epoch * args.epochs)
    warm = int(0.23 * total)

    def lr_factor(step):  # triangular: 0.2 -> 1 at 23% of training -> 0.07
        if step < warm:
            return 0.2 + 0.8 * step / warm
        return 1 - 0.93 * (step - warm) / (total - warm)
    ema = None  # lookahead state (every float tensor, BN statistics too), taken at its first update

    def lookahead(alpha):
        with torch.no_grad():
            for e, p in zip(ema, net.state_dict().values()):
                if p.dtype.is_floating_point:
                    e.lerp_(p, 1 - alpha)
                    p.copy_(e)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "metrics.jsonl", "w")
    # alternating flip: every image is flipped on alternate epochs, from a random first choice
    base_flip = (torch.rand(len(train_x), generator=torch.Generator().manual_seed(args.seed)) < 0.5).to(dev)
    step, epoch, train_seconds = 0, 0, 0.0
    while step < total:
        t = time.perf_counter()
        order = torch.randperm(len(train_x), generator=gen)
        flips = base_flip ^ bool(epoch % 2)
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[i * bs:(i + 1) * bs].to(dev)
            xb = train_x[idx]
            xb = torch.where(flips[idx][:, None, None, None], xb.flip(-1), xb)
            xb = _translate(xb, HYP["translate"], gen).contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * lr_factor(step)
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = net(xb, whiten_bias_grad=epoch < HYP["whiten_bias_epochs"])
            loss = F.cross_entropy(logits.float(), train_y[idx], label_smoothing=HYP["label_smoothing"],
                                   reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if epoch >= HYP["lookahead_start_epoch"] and step % 5 == 0:
                if ema is None:
                    ema = [p.detach().clone() for p in net.state_dict().values()]
                else:  # the average's decay grows over training: move fast early, average hard at the end
                    lookahead(0.95 ** 5 * (step / total) ** 3)
        if ema is not None:
            lookahead(1.0)  # every epoch ends on the lookahead weights
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        train_seconds += seconds
        epoch += 1
        acc = evaluate(net, val_x, val_y, False, dtype) if len(val_x) else float("nan")
        log.write(json.dumps({"epoch": epoch, "seconds": seconds, "val_acc": acc}) + "\n")
        log.flush()
        print(f"epoch {epoch:>2}  {seconds:6.1f} s  val_acc {acc:.4f}  ({train_seconds:.0f} s of training)", flush=True)
    log.close()
    tta = evaluate(net, val_x, val_y, True, dtype) if len(val_x) else float("nan")
    summary = {"val_acc": acc, "val_acc_tta": tta, "train_seconds": train_seconds,
               "wall_seconds": time.perf_counter() - t0, "device": str(dev), "precision": args.precision}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"final val_acc {acc:.4f}, with flip+translate TTA {tta:.4f}; {train_seconds:.0f} s of training, "
          f"{summary['wall_seconds']:.0f} s wall; wrote {out}/metrics.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="image folder or named set, as cifarlab train --data takes")
    ap.add_argument("--out", type=Path, default=Path("runs/airbench94"))
    ap.add_argument("--epochs", type=float, default=HYP["epochs"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", type=Path, help="where cifarlab keeps its decode cache (as train --data-root)")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    train(ap.parse_args())


if __name__ == "__main__":
    main()
