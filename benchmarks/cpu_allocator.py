"""CPU training speed with glibc's default malloc vs cifarlab's kept freed memory, side by side.

cifarlab's trainer raises glibc's mmap and trim thresholds (runtime.keep_freed_cpu_memory) so that a
step's large activations reuse the memory the previous step freed instead of mapping fresh pages and
faulting them in. The setting is process-wide, so each measurement runs in its own child process, the
two settings alternating model by model and round by round (a shared machine's drift hits both alike);
the best step of each is kept. Also printed: page faults per step and the child's peak memory.

    python benchmarks/cpu_allocator.py
    python benchmarks/cpu_allocator.py --models patchmlp fastnet --rounds 3 --precision fp32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

DEFAULT_MODELS = ["fastnet", "patchmlp", "mixconv001", "mixconv002", "basenet"]


def child(name: str, batch: int, precision: str) -> None:
    """One model's best training step under whatever allocator setting the environment asks for."""
    import torch

    from _common import best_seconds
    from cifarlab.runtime import keep_freed_cpu_memory
    from model_throughput import CPU_FRIENDLY, make_step

    kept = keep_freed_cpu_memory()
    step = make_step(name, batch, precision, False, torch.device("cpu"), CPU_FRIENDLY.get(name, {}))
    seconds = best_seconds(step, repeats=3, warmup=2)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kept": kept, "seconds": seconds, "faults": faults, "peak_mib": peak_mib}))


def measure(name: str, batch: int, precision: str, keep: bool) -> dict:
    env = dict(os.environ, CIFARLAB_KEEP_FREED_MEMORY="1" if keep else "0")
    out = subprocess.run([sys.executable, __file__, "--child", name, str(batch), precision], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                    help="default: bf16 where the CPU runs it natively, else fp32")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "BATCH", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, batch, precision = args.child
        return child(name, int(batch), precision)

    from _common import print_table
    from cifarlab.runtime import cpu_has_native_bf16
    from model_throughput import RECIPE_BATCH

    precision = args.precision or ("bf16" if cpu_has_native_bf16() else "fp32")
    best: dict[tuple[str, bool], dict] = {}
    for r in range(args.rounds):
        for name in args.models:
            for keep in ((False, True) if r % 2 == 0 else (True, False)):
                got = measure(name, RECIPE_BATCH.get(name, 256), precision, keep)
                if (name, keep) not in best or got["seconds"] < best[name, keep]["seconds"]:
                    best[name, keep] = got
        print(f"  round {r + 1}/{args.rounds} measured", flush=True)
    if not best[args.models[0], True]["kept"]:
        print("note: this libc has no mallopt; both columns ran with its default")
    rows = []
    for name in args.models:
        batch = RECIPE_BATCH.get(name, 256)
        sys_, kept = best[name, False], best[name, True]
        rows.append([name, batch, f"{batch / sys_['seconds']:,.0f}", f"{batch / kept['seconds']:,.0f}",
                     f"{sys_['seconds'] / kept['seconds']:.2f}x", f"{sys_['faults']:,}", f"{kept['faults']:,}",
                     f"{sys_['peak_mib']:,.0f}", f"{kept['peak_mib']:,.0f}"])
    print(f"training step ({precision}, channels_last, {os.cpu_count()} CPUs), best of {args.rounds} rounds")
    print_table(["model", "batch", "img/s glibc default", "img/s kept", "speed-up", "faults/step default",
                 "faults/step kept", "peak MiB default", "peak MiB kept"], rows)


if __name__ == "__main__":
    main()
