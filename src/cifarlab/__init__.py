"""cifarlab: fast, reproducible training and study of image classifiers on small images.

`import cifarlab` is light: torch and friends load only when a function needs them.

    from cifarlab import train, get_model
    summary = train(data="path/to/images", epochs=5)
"""

__version__ = "0.1.0"
__all__ = ["train", "resume_run", "get_model", "list_models", "register_model", "evaluate_run",
           "predict_run", "compare_runs", "export_run", "Config", "resolve_config", "UserError"]

_LAZY = {
    "train": ("api", "train"),
    "resume_run": ("api", "resume_run"),
    "get_model": ("models.registry", "get_model"),
    "list_models": ("models.registry", "list_models"),
    "register_model": ("models.registry", "register_model"),
    "evaluate_run": ("inference", "evaluate_run"),
    "predict_run": ("predict", "predict_run"),
    "compare_runs": ("compare", "compare_runs"),
    "export_run": ("export", "export_run"),
    "Config": ("config", "Config"),
    "resolve_config": ("recipes", "resolve_config"),
    "UserError": ("errors", "UserError"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'cifarlab' has no attribute {name!r}")
