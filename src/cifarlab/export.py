"""Ship a trained run as ONNX, a torch.export program (.pt2) or TorchScript, checked against PyTorch before
it is called done.

Owns the exported module's contract: float32 NCHW images in [0, 1] in, logits out, with the
run's normalisation built in (so a consumer needs no cifarlab), plus a JSON sidecar naming the
classes and the input shape. Every export is reloaded (onnxruntime / torch.export.load / torch.jit.load) and its
logits compared with the PyTorch model's on a batch. Never trains.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import UserError

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}
TOLERANCE = 1e-4


def _tolerance(expected: torch.Tensor) -> float:
    """1e-4, relative once logits exceed 1 in size: float32 rounding grows with them, and an exporter may
    run a layer in another exact form (mix-conv's wide form) that rounds differently."""
    return TOLERANCE * max(1.0, float(expected.abs().max()))


class NormalisedModel(torch.nn.Module):
    """[0, 1] float NCHW -> logits: the run's mean/std normalisation, then the model, in float32."""

    def __init__(self, model: torch.nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def _check_batch(shape: list[int], n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g)


def _to_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export with a dynamic batch dimension when the exporter accepts one, else with the example's batch."""
    try:
        import onnx  # noqa: F401  (the exporter needs it; fail here with the install hint)
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError("ONNX export needs the onnx extra: pip install 'cifarlab[onnx]'") from None
    import warnings

    kwargs = dict(input_names=["images"], output_names=["logits"], dynamo=True, external_data=False, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            batch = torch.export.Dim("batch", min=1, max=65536)
            torch.onnx.export(module, (example,), str(path), dynamic_shapes={"images": {0: batch}}, **kwargs)
        except Exception:  # noqa: BLE001 - a model whose shapes pin the batch: export that batch
            torch.onnx.export(module, (example,), str(path), **kwargs)


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("checking the ONNX file needs onnxruntime: pip install 'cifarlab[onnx]'") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


def _to_pt2(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.export's program, TorchScript's successor (torch.jit is deprecated): loads with plain PyTorch,
    no pickled Python code in the file. A dynamic batch where the model allows one."""
    try:
        program = torch.export.export(module, (example,),
                                      dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=65536)}})
    except Exception:  # noqa: BLE001 - a model whose shapes pin the batch: export that batch
        program = torch.export.export(module, (example,))
    torch.export.save(program, str(path))


def _run_pt2(path: Path, x: torch.Tensor) -> torch.Tensor:
    return torch.export.load(str(path)).module()(x)


def _to_torchscript(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice: the traced file still loads
        traced = torch.jit.trace(module, example, check_trace=False)
    traced.save(str(path))


def _run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        return torch.jit.load(str(path), map_location="cpu")(x)


def _other_batch_works(run, path: Path, module: torch.nn.Module, shape: list[int]) -> bool:
    """Whether the file also gives the right logits for another batch size (a trace can bake the batch in,
    e.g. mix-conv's grouped convolution has groups = batch)."""
    x = _check_batch(shape, 3, seed=1)
    try:
        got = run(path, x)
    except Exception:  # noqa: BLE001 - a shape error from the runtime means: fixed batch
        return False
    expected = module(x)
    return got.shape == expected.shape and float((got.float() - expected).abs().max()) <= _tolerance(expected)


def export_run(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None,
               checkpoint: str = "best", log=print) -> dict:
    """Export a run's model; returns the sidecar dict (path, max_abs_diff, ...). Raises UserError
    when the reloaded export's logits differ from PyTorch's by more than 1e-4."""
    from .inference import load_trained

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}; got '{fmt}'")
    run = load_trained(run_dir, checkpoint, "cpu")
    shape = list(run.record.image_shape)
    # export in float32 NCHW: the portable form; consumers choose their own precision
    model = run.model.float().to(memory_format=torch.contiguous_format).eval()
    module = NormalisedModel(model, run.record.mean, run.record.std).eval()
    path = Path(out) if out else Path(run_dir) / f"model{FORMATS[fmt]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = 16
    example = _check_batch(shape, batch)
    write, run_file = {"onnx": (_to_onnx, _run_onnx), "pt2": (_to_pt2, _run_pt2),
                       "torchscript": (_to_torchscript, _run_torchscript)}[fmt]
    with torch.no_grad():
        expected = module(example)
        write(module, example, path)
        got = run_file(path, example)
        dynamic = _other_batch_works(run_file, path, module, shape)
    diff, tolerance = float((got.float() - expected).abs().max()), _tolerance(expected)
    info = {"format": fmt, "path": str(path), "input": {"name": "images", "dtype": "float32",
                                                       "shape": ["batch" if dynamic else batch, *shape],
                                                       "range": [0.0, 1.0], "layout": "NCHW, RGB"},
            "output": "logits", "classes": run.classes, "normalisation": "built in (mean/std of the run)",
            "checked_batch": batch, "max_abs_diff": diff, "tolerance": tolerance,
            "model": run.cfg.model, "run": str(Path(run_dir))}
    if not diff <= tolerance:
        path.unlink(missing_ok=True)
        raise UserError(f"the {fmt} export's logits differ from PyTorch's by {diff:.2e} (> {tolerance:.1e}); "
                        "nothing was written. Report this with the model name")
    sidecar = path.with_suffix(path.suffix + ".json")
    sidecar.write_text(json.dumps(info, indent=2) + "\n")
    return info
