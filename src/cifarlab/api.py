"""The Python API: train(), resume_run(), train_run() — the CLI calls these too.

Owns picking the run folder and turning keyword arguments into a validated config.
Never parses command lines.
"""

from __future__ import annotations

from pathlib import Path

from .config import NON_RESULT_KEYS, Config, from_dict, load_yaml, merge, nested_to_dotted
from .errors import UserError
from .progress import Reporter
from .recipes import resolve_config
from .runs import RunDir, default_run_dir



def train_run(cfg: Config, out: str | Path | None = None, label: str | None = None,
              reporter: Reporter | None = None, on_epoch=None, stop_after_epochs: int = 0):
    """Train a resolved config into `out` (default runs/<time>-<label>); returns the Summary.
    on_epoch(row) is called after each epoch's checkpoint and may raise to stop the run;
    stop_after_epochs=N stops it, resumable, after N epochs (trainer.StoppedEarly)."""
    from .trainer import fit

    run_dir = Path(out) if out else default_run_dir(label or cfg.model)
    return fit(cfg, run_dir, reporter=reporter, on_epoch=on_epoch, stop_after_epochs=stop_after_epochs)


def resume_run(run_dir: str | Path, overrides: dict | None = None, reporter: Reporter | None = None,
               stop_after_epochs: int = 0, on_epoch=None):
    """Continue an interrupted run from checkpoints/last.pt with its saved config (on_epoch: as train_run)."""
    from .trainer import fit

    run = RunDir(run_dir)
    if not run.config_file.is_file():
        raise UserError(f"{run.path} has no config.yaml; --resume takes a folder made by `cifarlab train`")
    overrides = overrides or {}
    bad = [k for k in nested_to_dotted(overrides) if k not in NON_RESULT_KEYS]
    if bad:
        raise UserError(f"cannot change '{bad[0]}' when resuming (results would no longer match); "
                        f"allowed: {', '.join(sorted(NON_RESULT_KEYS))}")
    cfg = from_dict(merge(load_yaml(run.config_file), overrides))
    if run.summary_file.is_file():
        raise UserError(f"{run.path} already finished (summary.json exists); evaluate it with `cifarlab eval {run.path}`")
    if not run.has_resume_checkpoint():
        # killed before the first epoch ended: nothing to continue, so start it again in place
        run.metrics_file.unlink(missing_ok=True)
        return fit(cfg, run.path, resume=False, reporter=reporter, allow_existing=True, on_epoch=on_epoch,
                   stop_after_epochs=stop_after_epochs)
    return fit(cfg, run.path, resume=True, reporter=reporter, on_epoch=on_epoch, stop_after_epochs=stop_after_epochs)


def train(config: Config | dict | str | None = None, *, recipe: str | None = None, data: str | None = None,
          out: str | Path | None = None, quiet: bool = False, stop_after_epochs: int = 0, **overrides):
    """Train from Python, e.g. ``train(data="cifar10", epochs=5, optim={"lr": 0.05})``.

    `config` may be a Config, a nested dict or a YAML path; keyword arguments are
    top-level keys or section dicts and win over everything else. stop_after_epochs=N
    stops (resumably, raising trainer.StoppedEarly) after the first N epochs of the schedule.
    """
    reporter = Reporter(quiet=quiet)
    if isinstance(config, Config):
        base = config.to_dict()
        cfg = from_dict(merge(merge(base, {"data": {"spec": data}} if data else {}), overrides))
    else:
        reasons: list[str] = []
        cfg = resolve_config(recipe, str(config) if isinstance(config, (str, Path)) else None, data,
                             merge(config if isinstance(config, dict) else {}, overrides), auto=config is None,
                             reasons=reasons)
        for r in reasons:
            reporter.info(f"{cfg.recipe}: {r}")
    return train_run(cfg, out=out, label=recipe or cfg.model, reporter=reporter, stop_after_epochs=stop_after_epochs)
