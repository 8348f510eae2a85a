"""How much of a chunked layer's edge work the force backward keeps instead of recomputing it.

NequIP sums a large structure's messages in chunks of edges (``models/nequip.py``). A chunk whose
saved tensors the backward keeps costs memory; a chunk run under ``torch.utils.checkpoint`` costs
one more forward pass of its edge work in the backward. ``KeptEdgeWork`` is one evaluation's budget
for the first kind: chunks are kept, layer after layer, while their saved tensors fit in it, and
the rest are recomputed. Either way the same operations run on the same numbers, so energies,
forces and stress do not depend on the budget; only time and peak memory do.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: the share of the memory available at a model's first chunked evaluation that kept edge work may
#: take (the rest is for everything else: the recomputed chunks' backward, the neighbour list, MD)
KEPT_SHARE = 0.4


def available_bytes(device: torch.device) -> int:
    """Free memory of ``device``: the GPU's free memory, or MemAvailable on Linux; 0 where unknown
    (then every chunk is recomputed, the memory-safe choice)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class KeptEdgeWork:
    """A budget in bytes for the saved tensors of kept chunks, shared by the layers of one evaluation.

    ``admits`` says whether the next chunk fits, from the bytes per edge that this layer's chunks
    kept so far (a layer's first chunk is admitted while any budget is left: its size is not known
    before it runs); ``run`` evaluates a kept chunk and counts the saved tensors with one row per
    edge of the chunk (the edge work; node features and weights are shared by every chunk)."""

    def __init__(self, limit_bytes: int):
        self.limit = max(int(limit_bytes), 0)
        self.used = 0
        self.kept_chunks = 0
        self.recomputed_chunks = 0

    def admits(self, num_edges: int, bytes_per_edge: float | None) -> bool:
        if bytes_per_edge is None:
            return self.used < self.limit
        return self.used + num_edges * bytes_per_edge <= self.limit

    def run(self, function, args, num_edges: int) -> tuple[torch.Tensor, int]:
        """``function(*args)`` with its saved tensors kept; (result, bytes of edge work saved)."""
        saved = 0

        def pack(tensor):
            nonlocal saved
            if tensor.dim() > 0 and tensor.shape[0] == num_edges:
                saved += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            result = function(*args)
        self.used += saved
        self.kept_chunks += 1
        return result, saved


def kept_edge_work(model: torch.nn.Module, device: torch.device) -> KeptEdgeWork:
    """A fresh budget for one evaluation of ``model``: ``KEPT_SHARE`` of the memory available at its
    first chunked evaluation, remembered on the model. The process keeps the memory it has used
    (``stableff.runtime`` does not trim the heap, and PyTorch's GPU allocator caches), so a later
    evaluation reuses that memory and must not count it as taken: hence measured once."""
    limit = getattr(model, "_kept_edge_work_limit", None)
    if limit is None:
        limit = int(KEPT_SHARE * available_bytes(torch.device(device)))
        model._kept_edge_work_limit = limit
    return KeptEdgeWork(limit)
