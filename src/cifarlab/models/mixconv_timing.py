"""form="timed" for MixConv2d: time every exact form of a layer once on this machine, keep the fastest.

Which form of a mix-conv layer runs fastest depends on more than the map size: the same 512->512 layer on
4x4 maps is fastest as one matmul on an AVX2 CPU and as a wide conv on an AVX-512 EPYC, and bf16 with AMX
reorders everything again (docs/RESULTS.md). Rules written from one machine pick slow forms on another, so,
like cuDNN's benchmark mode, the first batch of each new layer shape times the forms (forward and backward,
in the dtype, layout and thread count of the real step) and the choice is kept for the process and in a
small JSON file per machine, so later runs start at full speed. The forms compute the same function
(tested equal in float64), so the choice changes speed and rounding only.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch

from ..runtime import cpu_name_and_flags
from .mixconv import compute_dtype

CANDIDATES = ("grouped", "wide", "wide_matmul", "bmm", "fused")
CACHE_NAME = "mixconv_forms.json"
# a form whose first run took this many times the fastest first run is not run again (on small maps the
# grouped conv takes 30-50x a plain conv on a CPU); first runs also pay one-time costs, hence the slack
SECOND_ROUND_CUTOFF = 3.0
# part of every key: raised when what a timing measures changes, so older choices are timed again
# (2: each form's output converted to its input's layout, as MixConv2d.run_form hands it on)
METHOD = 2

_choices: dict[str, str] = {}  # this process's decisions, by layer key
_disk: dict | None = None
_announced = False


def cache_file() -> Path:
    """Where the decisions persist: $CIFARLAB_CACHE, else ~/.cache/cifarlab (the default data root)."""
    return Path(os.environ.get("CIFARLAB_CACHE", "~/.cache/cifarlab")).expanduser() / CACHE_NAME


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()}, {torch.get_num_threads()} threads"  # threads read each time: they can change


@functools.cache  # every forward of a timed layer builds its key
def _cpu_model() -> str:
    """The CPU's name and the vector units ATen and oneDNN dispatch to: one name ("AMD EPYC") covers
    AVX2-only and AVX-512 parts whose fastest forms differ."""
    name, flags = cpu_name_and_flags()
    if not name:
        import platform

        name = platform.processor() or platform.machine()
    units = torch.backends.cpu.get_cpu_capability() + (" AMX" if "amx_tile" in flags else "")
    return f"{name} ({units})"


def layer_key(layer, x: torch.Tensor, backward: bool, forms: tuple[str, ...]) -> str:
    """The timing's key: machine, torch, dtype, layout, shapes and the candidate `forms` (with the fused
    kernel's build), so that forms added or rebuilt since are timed again."""
    k, c_out, c_in, kh, kw = layer.weight.shape
    n, _, h, w = x.shape
    layout = "channels_last" if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else "nchw"
    return (f"{_machine(x.device)} | torch {torch.__version__} | {str(compute_dtype(x)).replace('torch.', '')} "
            f"| {'fwd+bwd' if backward else 'fwd'} | {layout} | batch {n} {c_in}->{c_out} K={k} {kh}x{kw} "
            f"stride {layer.stride} {h}x{w}{' bias' if layer.bias is not None else ''} "
            f"| {' '.join(_with_versions(forms))} | method {METHOD}")


def _load_disk() -> dict:
    global _disk
    if _disk is None:
        try:
            _disk = json.loads(cache_file().read_text())
            if not isinstance(_disk, dict):
                _disk = {}
        except (OSError, ValueError):
            _disk = {}  # none yet, or unreadable: time again and rewrite it
    return _disk


def _save_disk(key: str, entry: dict) -> None:
    from ..runs import atomic_write_text

    global _disk
    _disk = None  # re-read: another process (a DDP rank, a concurrent run) may have added shapes since
    disk = _load_disk()
    disk[key] = entry
    try:
        path = cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(disk, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # a read-only home: the choice still holds for this process


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(shadow, form: str, x: torch.Tensor, backward: bool) -> float:
    """Seconds for one forward (and backward, into the shadow copy only) of `form`, its output in x's layout
    as the net gets it (MixConv2d.run_form)."""
    _sync(x.device)
    start = time.perf_counter()
    if backward:
        with torch.enable_grad():
            xi = x.detach().requires_grad_(x.requires_grad)
            out = shadow.run_form(form, xi)
            inputs = [p for p in shadow.parameters() if p.requires_grad] + ([xi] if xi.requires_grad else [])
            torch.autograd.grad(out, inputs, torch.ones_like(out))
    else:
        with torch.no_grad():
            shadow.run_form(form, x)
    _sync(x.device)
    return time.perf_counter() - start


def _with_versions(forms: tuple[str, ...]) -> list[str]:
    """The fused kernel's name with its build (and "-fp32" where its bf16 variant is off or missing, which
    makes it another form in bf16 steps): a choice timed against another build is timed again."""
    if "fused" not in forms:  # e.g. a GPU layer: never build the CPU kernel just to name it
        return list(forms)
    from .mixconv_fused import has_bf16, version

    fused = f"fused@{version()}" + ("" if has_bf16() else "-fp32")
    return [fused if f == "fused" else f for f in forms]


def candidates(layer, x: torch.Tensor) -> tuple[str, ...]:
    """The forms that can run this layer here: the fused kernel only where it is built and fits the layer."""
    return CANDIDATES if layer._fused_ok(x) else tuple(f for f in CANDIDATES if f != "fused")


def measure(layer, x: torch.Tensor, backward: bool, warmup: str, forms: tuple[str, ...]) -> dict:
    """{form: best seconds} for every one of `forms` (candidates(layer, x)) on input x: one run each, then a
    second run of those within SECOND_ROUND_CUTOFF of the fastest. One untimed run of `warmup` first takes the
    costs paid once per process (thread pools, CUDA handles) off whichever form happens to be timed first."""
    # a copy, so timing accumulates no gradient into (or fires no DDP hook on) the real parameters
    shadow = copy.deepcopy(layer)
    _time_once(shadow, warmup, x, backward)
    seconds: dict[str, float] = {}
    for form in forms:
        try:
            seconds[form] = _time_once(shadow, form, x, backward)
        except RuntimeError:  # e.g. out of memory on a GPU for a wide form: not a candidate here
            continue
    best = min(seconds.values())
    for form in [f for f, s in seconds.items() if s <= SECOND_ROUND_CUTOFF * best]:
        seconds[form] = min(seconds[form], _time_once(shadow, form, x, backward))
    return seconds


def timed_form(layer, x: torch.Tensor, fallback: str) -> str:
    """The fastest form for this layer and input, timed on first sight of its shape; `fallback` (the
    measured rules) while torch.compile traces the model, where nothing can be timed (exporters never get
    here: MixConv2d.forward records the wide form for them)."""
    if torch.compiler.is_compiling():
        return fallback
    backward = torch.is_grad_enabled() and any(p.requires_grad for p in layer.parameters())
    forms = candidates(layer, x)
    key = layer_key(layer, x, backward, forms)
    form = _choices.get(key)
    if form is None:
        entry = _load_disk().get(key)
        if isinstance(entry, dict) and entry.get("form") in forms:
            form = entry["form"]
        else:
            _announce()
            seconds = measure(layer, x, backward, warmup=fallback, forms=forms)
            form = min(seconds, key=seconds.get) if seconds else fallback
            _save_disk(key, {"form": form, "ms": {f: round(s * 1e3, 3) for f, s in seconds.items()}})
        _choices[key] = form
    return form


def _announce() -> None:
    global _announced
    if not _announced:
        _announced = True
        print(f"mix-conv form=timed: timing each new layer shape's forms once (kept in {cache_file()})",
              file=sys.stderr, flush=True)


def forget() -> None:
    """Drop this process's decisions (tests; or after changing threads mid-process)."""
    global _disk, _announced
    _choices.clear()
    _disk, _announced = None, False
