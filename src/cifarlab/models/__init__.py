"""Model families behind one registry (see registry.py)."""

from .registry import get_model, list_models, model_options, register_model

__all__ = ["get_model", "list_models", "model_options", "register_model"]
