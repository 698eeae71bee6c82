"""Capture-once, replay-many CUDA graphs of the detector's device pipeline, one per input shape (LRU)."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any, Callable, Dict, Hashable, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["GraphCache"]

Outputs = Tuple[Tensor, ...]


class GraphCache:
    """CUDA graphs of ``run(*inputs)`` keyed by shape; at most ``max_graphs`` kept (each holds its activations).

    :meth:`replay` returns the graph's static outputs (copy them before the
    next call), or ``None`` after a failed capture - then it warns once and
    :attr:`enabled` turns ``False`` so the caller runs eagerly.
    """

    def __init__(self, device: torch.device, max_graphs: int = 4) -> None:
        self.device = device
        self.max_graphs = max_graphs
        self.enabled = True
        self._graphs: "OrderedDict[Hashable, Dict[str, Any]]" = OrderedDict()

    def __len__(self) -> int:
        """Number of captured graphs held."""
        return len(self._graphs)

    def replay(
        self, key: Hashable, inputs: Outputs, run: Callable[..., Outputs], keep_alive: Callable[[], Any]
    ) -> Optional[Outputs]:
        """Replay (capturing first if needed) ``run`` for ``inputs``; ``keep_alive()`` names tensors the graph reads."""
        rec = self._graphs.get(key)
        if rec is None:
            try:
                rec = self._capture(inputs, run, keep_alive)
            except Exception as e:  # noqa: BLE001 - fall back to eager, loudly
                warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); running eagerly instead")
                self.enabled = False
                return None
            self._graphs[key] = rec
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        for static, new in zip(rec["inputs"], inputs):
            static.copy_(new, non_blocking=True)
        rec["graph"].replay()
        return rec["outputs"]

    def _capture(self, inputs: Outputs, run: Callable[..., Outputs], keep_alive: Callable[[], Any]) -> Dict[str, Any]:
        static = tuple(t.clone() for t in inputs)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: anchors cached, fused weights built, kernels chosen
                run(*static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = run(*static)
        # keep every tensor the graph reads alive (e.g. anchors that live in an LRU cache)
        return {"graph": graph, "inputs": static, "outputs": outputs, "keep": keep_alive()}
