"""Training images/s for every registered model, and how much useful compute that is, side by side in one run.

One optimizer step = forward + backward + SGD step on random 32x32 inputs (28x28 grey for patchmlp),
channels_last. Columns: useful GFLOP per image (forward, counted by torch.utils.flop_counter; for the
dynamic mix-conv nets the same net with k=1, i.e. what one static convolution with the mixed kernel
costs, whichever form runs), img/s per precision (and compiled, unless --no-compile), the achieved
useful GFLOP/s (x3 for forward + backward) in the first column's mode, and its ratio to fastnet's in
the same run. --precisions defaults to bf16 where the CPU has it natively, else fp32 only (emulated
bf16 is orders of magnitude slower and would only time the emulation).

    python benchmarks/model_throughput.py --batch 256
    python benchmarks/model_throughput.py --models fastnet mixconv000 mixconv001 mixconv002 --no-compile
    python benchmarks/model_throughput.py --recipe-batch --no-compile   # each seed model at its recipe's batch
    python benchmarks/model_throughput.py --models mixconv001 mixconv002 --no-compile --mixconv-rules fp32 gpu --rounds 3
    python benchmarks/model_throughput.py --models mixconv000 mixconv001 mixconv002 --no-compile --timed --rounds 2
    python benchmarks/model_throughput.py --models fastnet mixconv000 mixconv001 mixconv002 --recipe-batch \
        --no-compile --precisions fp32 --without-fused --rounds 2   # the fused kernel's gain, side by side
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from _common import best_seconds, print_table
from cifarlab.models import get_model, list_models
from cifarlab.models.mixconv import MixConv2d
from cifarlab.models.registry import model_options
from cifarlab.runtime import cpu_has_native_bf16, keep_freed_cpu_memory, to_channels_last

# report-faithful sizes are too slow to time on 2 cores in reasonable time; these keep each step under ~10 s
CPU_FRIENDLY = {"basenet": {"widths": (32, 64, 128, 256)}}


# the batch each seed recipe trains at (--recipe-batch)
RECIPE_BATCH = {"mixconv000": 64, "mixconv001": 256, "mixconv002": 75, "patchmlp": 128, "basenet": 128,
                "basenet_steps": 128, "fastnet": 256, "transfer_resnet18": 32}


def _input(name: str) -> tuple[int, int]:
    return (1, 28) if name == "patchmlp" else (3, 32)


def useful_gflops(name: str, kwargs: dict) -> float:
    """Forward GFLOP per image; a dynamic mix of K kernels counts as the one static conv it amounts to."""
    from torch.utils.flop_counter import FlopCounterMode

    in_ch, size = _input(name)
    static = {**kwargs, "k": 1, "form": "wide"} if "k" in model_options(name) else kwargs  # one plain conv
    model = get_model(name, num_classes=10, in_channels=in_ch, image_size=size, **static).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(2, in_ch, size, size))
    return counter.get_total_flops() / 2 / 1e9


def make_step(name: str, batch: int, precision: str, compiled: bool, dev: torch.device, kwargs: dict,
              rules: str = "dtype", fused: bool = True):
    """One training step of a freshly built model (forward, backward, SGD); `rules` picks the mix-conv forms
    (MixConv2d.CPU_RULES: "dtype" as in training, or "fp32" / "gpu" for comparison); fused=False runs them
    without the fused CPU kernel (CIFARLAB_FUSED_MIXCONV=0)."""
    torch.manual_seed(0)
    in_ch, size = _input(name)
    model = get_model(name, num_classes=10, in_channels=in_ch, image_size=size, **kwargs).to(dev)
    model = to_channels_last(model)
    fwd = torch.compile(model) if compiled else model
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    x = torch.randn(batch, in_ch, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)

    def step():
        MixConv2d.CPU_RULES = rules
        if not fused:
            os.environ["CIFARLAB_FUSED_MIXCONV"] = "0"
        try:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = fwd(x)
            F.cross_entropy(out.float(), y).backward()
        finally:
            MixConv2d.CPU_RULES = "dtype"
            os.environ.pop("CIFARLAB_FUSED_MIXCONV", None)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--recipe-batch", action="store_true", help="each model at its seed recipe's batch size")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=1, help="time every model this many times in turn, keep the best")
    ap.add_argument("--static-twins", action="store_true",
                    help="also time each mix-conv net with K=1 as plain convs: the ceiling its dynamic layers approach")
    ap.add_argument("--mixconv-rules", nargs="+", choices=["fp32", "gpu"], default=[],
                    help="also time each net with mix-conv layers under these form rules: the fp32 CPU rules whatever the "
                         "dtype, or the GPU rules (the wide conv under 100 px)")
    ap.add_argument("--timed", action="store_true",
                    help="also time each mix-conv net with model_args.form=timed (each layer's forms timed on its first "
                         "step, outside the timed steps; choices kept in ~/.cache/cifarlab/mixconv_forms.json)")
    ap.add_argument("--without-fused", action="store_true",
                    help="also time each mix-conv net without the fused CPU kernel (the library forms only)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cpu":
        keep_freed_cpu_memory()  # as the trainer does, so these are training's speeds (benchmarks/cpu_allocator.py)
    precisions = args.precisions or (["bf16", "fp32"] if dev.type == "cuda" or cpu_has_native_bf16() else ["fp32"])
    modes = [(p, False) for p in precisions] + ([] if args.no_compile else [(p, True) for p in precisions])
    names = args.models or list_models()
    if "fastnet" not in names:
        names = ["fastnet", *names]  # the yardstick of the last column
    runs = [(name, False) for name in names]
    runs += [(name, rules) for rules in args.mixconv_rules for name in names if name.startswith("mix")]
    if args.timed:
        runs += [(name, "timed") for name in names if name.startswith("mixconv")]
    if args.without_fused:
        runs += [(name, "nofused") for name in names if name.startswith("mix")]
        if args.timed:  # the library forms at their best: each layer's fastest, timed here
            runs += [(name, "timed-nofused") for name in names if name.startswith("mixconv")]
    if args.static_twins:
        runs += [(name, "twin") for name in names if name.startswith("mixconv")]
    setup = {}
    for name, variant in runs:
        kwargs = CPU_FRIENDLY.get(name, {}) if dev.type == "cpu" else {}
        if variant == "twin":  # one kernel, one plain conv: the same net without its dynamic part
            kwargs = {**kwargs, "k": 1, "form": "wide"}
        elif variant in ("timed", "timed-nofused"):
            kwargs = {**kwargs, "form": "timed"}
        batch = RECIPE_BATCH.get(name, args.batch) if args.recipe_batch else args.batch
        rules = variant if variant in ("fp32", "gpu") else "dtype"
        fused = variant not in ("nofused", "timed-nofused")
        setup[name, variant] = (kwargs, batch, [make_step(name, batch, p, c, dev, kwargs, rules, fused)
                                                for p, c in modes])
    # rounds over every model in turn, best time kept: a shared machine's drift then hits all of them alike
    best = {key: [float("inf")] * len(modes) for key in runs}
    for r in range(args.rounds):
        for key in runs:
            for i, (step, (_, compiled)) in enumerate(zip(setup[key][2], modes)):
                warmup = (2 if compiled else 1) if r == 0 else 0
                best[key][i] = min(best[key][i], best_seconds(step, repeats=2, warmup=warmup))
        print(f"  round {r + 1}/{args.rounds} measured", flush=True)
    rows, achieved = [], {}
    for name, variant in runs:
        kwargs, batch, _ = setup[name, variant]
        gflop = useful_gflops(name, kwargs)
        rates = [batch / t for t in best[name, variant]]
        achieved[name, variant] = 3 * gflop * rates[0]
        label = name + (" (" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")" if kwargs else "")
        label += f" ({variant} form rules)" if variant in ("fp32", "gpu") else ""
        label += " (static twin)" if variant == "twin" else ""
        label += " (without the fused kernel)" if variant in ("nofused", "timed-nofused") else ""
        rows.append([label, batch, f"{gflop:.3f}"] + [f"{r:,.0f}" for r in rates] + [f"{achieved[name, variant]:,.0f}"])
    for row, key in zip(rows, runs):
        row.append(f"{achieved[key] / achieved['fastnet', False]:.2f}")
    heads = [f"{p}{' compiled' if c else ''} img/s" for p, c in modes]
    print(f"training step, device {dev}, {torch.get_num_threads()} threads; useful GFLOP/s in {modes[0][0]} eager")
    print_table(["model", "batch", "GFLOP/img"] + heads + ["useful GFLOP/s", "vs fastnet"], rows)


if __name__ == "__main__":
    main()
