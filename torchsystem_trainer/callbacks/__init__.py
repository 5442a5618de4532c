"""Callbacks shipped with the library: consumers of the Trainer's events, one per file."""

from torchsystem_trainer.callbacks.callback import HOOKS, Callback, CallbackHookError, hook_name

__all__ = ["HOOKS", "Callback", "CallbackHookError", "hook_name"]
