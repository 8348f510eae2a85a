"""A committee of models as an early warning: how much its members disagree on the forces of the
frames an MD run driven by one of them visits (docs/method.md, "Committee uncertainty").

The disagreement of a frame is the largest over atoms of the spread of that atom's force across
the M members (DeePMD-kit's ``max_devi_f``), in eV/A:

    d = max_i sqrt( (1/M) sum_m | F_i^m - <F_i> |^2 ),   <F_i> = (1/M) sum_m F_i^m

A frame is *uncertain* when d exceeds a threshold: an absolute one (eV/A), or a multiple of the
committee's mean d over the driving model's validation frames (``"3x"``, the default), where the
members learned the same data and disagree least. The first uncertain frame of a replica is
recorded with its time; it does not stop the run (failures are decided by the monitors alone).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import torch

from stableff.errors import StableFFError
from stableff.md.records import DISAGREEMENT_COLUMN as COLUMN  # thermo.csv's column of the disagreement
#: the threshold when none is given: three times the committee's disagreement on validation data
DEFAULT_THRESHOLD = "3x"


def force_disagreement(forces, segments=None, num_segments: int | None = None):
    """``forces`` [M, N, 3] of M members (numpy or torch) -> the frame's disagreement d (eV/A);
    with ``segments`` (the structure of each atom, [N]) one d per structure ([num_segments])."""
    forces = torch.as_tensor(forces, dtype=torch.float64)
    spread = (forces - forces.mean(dim=0, keepdim=True)).pow(2).sum(dim=2).mean(dim=0).sqrt()  # [N]
    if segments is None:
        return float(spread.max()) if spread.numel() else 0.0
    segments = torch.as_tensor(segments, dtype=torch.long, device=spread.device)
    out = torch.zeros(num_segments, dtype=spread.dtype, device=spread.device)
    return out.scatter_reduce(0, segments, spread, reduce="amax", include_self=True)


@dataclasses.dataclass(frozen=True)
class Committee:
    """The members (checkpoint paths, the driving model first), their content hashes, and the
    threshold in eV/A with the rule it came from (for the log and the report)."""

    members: tuple[str, ...]
    hashes: tuple[str, ...]
    threshold_eV_per_A: float
    rule: str

    @property
    def others(self) -> tuple[str, ...]:
        """The members besides the driving model (the ones an engine evaluates in addition)."""
        return self.members[1:]

    def fingerprint(self) -> dict:
        """What determines the uncertainty a replica records: the members' content and the threshold."""
        return {"members": sorted(self.hashes), "threshold_eV_per_A": float(f"{self.threshold_eV_per_A:.6g}")}

    def summary(self) -> dict:
        return {"members": list(self.members), "threshold_eV_per_A": self.threshold_eV_per_A, "rule": self.rule}


def parse_threshold(text) -> tuple[str, float]:
    """``"3x"`` -> ("multiple", 3.0); ``"0.25"`` or 0.25 -> ("absolute", 0.25 eV/A)."""
    raw = str(text).strip()
    match = re.fullmatch(r"([0-9.eE+-]+)\s*x", raw)
    try:
        value = float(match.group(1) if match else raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or not np.isfinite(value):
        raise StableFFError(f"uncertainty threshold '{text}': give a force disagreement in eV/A (e.g. 0.3) or a positive multiple "
                            "of the committee's disagreement on validation data (e.g. 3x)")
    return ("multiple" if match else "absolute"), value


def validation_frames(checkpoint_path: str):
    """The validation frames of the run that trained ``checkpoint_path`` (its stored data section,
    split as the trainer split it), or StableFFError saying how to give reference frames instead."""
    from stableff.data.splits import load_splits
    from stableff.models.saved import load_checkpoint

    stored = load_checkpoint(checkpoint_path).get("config", {}).get("data")
    if not stored:
        raise StableFFError(f"{checkpoint_path}: the checkpoint names no training data; give reference frames for the threshold (--uncertainty-reference FILE)")
    try:
        return load_splits(stored)["validation"]
    except (StableFFError, OSError) as exc:
        raise StableFFError(f"{checkpoint_path}: cannot read its validation data for the uncertainty threshold ({exc}); "
                            "give reference frames (--uncertainty-reference FILE) or an absolute threshold in eV/A") from None


def frame_disagreements(members: list[str], frames, device: str = "cpu", batch_size: int = 8) -> np.ndarray:
    """The disagreement d (eV/A) of the committee ``members`` on each of ``frames``."""
    from stableff.data.graph import frame_to_graph
    from stableff.measures.accuracy import predict
    from stableff.models.saved import model_from_checkpoint

    forces, counts = [], None
    for path in members:
        model, _ = model_from_checkpoint(path, device=device)
        graphs = [frame_to_graph(f, model.type_numbers, model.r_max, model.dtype) for f in frames]
        prediction = predict(model, graphs, batch_size=batch_size, device=device)
        forces.append(prediction["forces_pred"])
        counts = prediction["num_atoms"]
    segments = np.repeat(np.arange(len(counts)), counts)
    return force_disagreement(np.stack(forces), segments, len(counts)).numpy()


def make_committee(driver: str, members, threshold=DEFAULT_THRESHOLD, reference=None, device: str = "cpu") -> Committee:
    """The committee of ``driver`` and ``members`` (checkpoints; one file's content counts once, the
    driver is always a member) with its threshold resolved to eV/A: absolute as given, or a multiple
    of the mean disagreement on ``reference`` (structure files) or else the driver's validation frames."""
    from stableff.data.io import read_frames
    from stableff.fingerprint import file_hash
    from stableff.models.saved import load_checkpoint

    kind, value = parse_threshold(threshold)
    paths, hashes = [], []
    for path in [driver, *members]:
        if not Path(path).is_file():
            raise StableFFError(f"{path}: no such checkpoint file (a committee member)")
        load_checkpoint(path)  # a foreign file stops here with its one line
        digest = file_hash(path)
        if digest not in hashes:
            paths.append(str(path))
            hashes.append(digest)
    if len(paths) < 2:
        raise StableFFError(f"a committee needs at least two different models (got {len(paths)}: {', '.join(paths)}); "
                            "give the checkpoints of models trained with other seeds")
    if kind == "absolute":
        return Committee(tuple(paths), tuple(hashes), value, f"{value:g} eV/A (absolute)")
    if reference:
        frames = [f for spec in ([reference] if isinstance(reference, str) else reference) for f in read_frames(spec, check_distances=False)]
        where = "frames of " + ", ".join([reference] if isinstance(reference, str) else list(reference))
    else:
        frames = validation_frames(driver)
        where = f"validation frames of {driver}"
    if not frames:
        raise StableFFError(f"no reference frames for the uncertainty threshold ({where})")
    level = float(np.mean(frame_disagreements(paths, frames, device)))
    if not level > 0:
        raise StableFFError(f"the committee's members agree exactly on the {where} (disagreement {level:g} eV/A): are they copies of one model?")
    return Committee(tuple(paths), tuple(hashes), value * level,
                     f"{value:g} x {level:.4f} eV/A, the committee's mean disagreement over the {len(frames)} {where}")


class CommitteeCalculators:
    """The members besides the driver as ASE calculators: their forces on one structure (the ase engine)."""

    def __init__(self, committee: Committee, device: str = "cpu"):
        from stableff.md.calculator import cached_calculator

        self.calculators = [cached_calculator(path, device=device) for path in committee.others]

    def disagreement(self, atoms, driver_forces: np.ndarray) -> float:
        """d of the frame ``atoms`` given the driving model's (unconstrained) forces on it."""
        if not np.all(np.isfinite(atoms.positions)):
            return float("nan")
        forces = [driver_forces]
        for calculator in self.calculators:
            snapshot = atoms.copy()
            snapshot.set_constraint()
            snapshot.calc = calculator
            forces.append(snapshot.get_forces())
        return force_disagreement(np.stack(forces))


class CommitteeBatch:
    """The members besides the driver over a batch of replicas (the batched engine): each member's
    forces on every replica in one call, with its own neighbour lists; rows leave with :meth:`keep`."""

    def __init__(self, committee: Committee, systems, skin_A: float, device):
        from stableff.md.engines.replica_batch import ReplicaBatch
        from stableff.models.saved import model_from_checkpoint

        self.batches = []
        for path in committee.others:
            model, _ = model_from_checkpoint(path, device=device)
            self.batches.append(ReplicaBatch(model.to(device).eval(), systems, skin_A, device))

    def keep(self, keep: list[bool]) -> None:
        for batch in self.batches:
            batch.keep(keep)

    def disagreement(self, positions: torch.Tensor, driver_forces: torch.Tensor, atom_replica: torch.Tensor, num_replicas: int) -> np.ndarray:
        """d of every replica of the batch (NaN where its positions are not finite)."""
        forces = [driver_forces]
        for batch in self.batches:
            forces.append(batch.energy_forces(positions)[1])
        with torch.no_grad():
            return force_disagreement(torch.stack(forces), atom_replica, num_replicas).cpu().numpy()
