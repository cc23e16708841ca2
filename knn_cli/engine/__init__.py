"""The fast path apart from the math: kernels, workspaces, the two lanes, the split first layer
and evaluation on a second thread. It serves any stack of layers and any update rule, and is
tested against the textbook layers (tests/test_engine.py)."""

from knn_cli.engine.step import Engine, Workspace

__all__ = ["Engine", "Workspace"]
