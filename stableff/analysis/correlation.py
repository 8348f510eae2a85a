"""Per-layer edge-feature correlation of a trained model over a dataset (`stableff correlation`)."""

from __future__ import annotations

from stableff.data.graph import frame_to_graph
from stableff.data.io import read_frames
from stableff.train.checkpoint import model_from_checkpoint
from stableff.train.decorrelation import dataset_correlation


def correlation_of_files(model_path, paths, batch_size: int = 8, device: str = "cpu", channels: str = "all") -> dict:
    """corr_l (mean and std over batches), channel counts and mean R matrices over all frames of ``paths``."""
    model, _ = model_from_checkpoint(model_path, device=device)
    dtype = next(model.parameters()).dtype
    graphs = []
    for path in paths:
        frames = read_frames(path)
        graphs.extend(frame_to_graph(f, model.type_numbers, model.r_max, dtype) for f in frames)
    result = dataset_correlation(model, graphs, batch_size=batch_size, device=device, progress=True, scalar_counts=model.edge_feature_scalar_counts, channels=channels)
    result["n_frames"] = len(graphs)
    return result
