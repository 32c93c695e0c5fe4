"""The attnprof tab in TensorBoard: each run's dashboard and its call-site and call tables.

Registered through the `tensorboard_plugins` entry point (pyproject.toml), so `tensorboard --logdir traces` shows
it next to the PyTorch Profiler tab for every run folder holding an attnprof.json.
"""
from attnprof.tbplugin.plugin import AttnprofPlugin

__all__ = ["AttnprofPlugin"]
