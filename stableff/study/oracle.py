"""The oracle of active learning: an ASE calculator named as ``package.module:Class`` with keyword
arguments, and the labelled frames it gives (each whole frame written the moment the oracle
returns, with the oracle's settings and seconds in its header; a frame the oracle raises on is
recorded beside them and never sent again)."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from stableff.errors import ConfigError, StableFFError
from stableff.io import read_json, write_json_atomic
from stableff.study.plan import OracleConfig


def oracle_class(oracle: OracleConfig):
    module, name = oracle.calculator.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"oracle.calculator: cannot import {oracle.calculator} ({exc})") from None


def make_oracle(oracle: OracleConfig):
    try:
        return oracle_class(oracle)(**oracle.kwargs)
    except TypeError as exc:
        raise ConfigError(f"oracle.kwargs: {oracle.calculator} does not take {oracle.kwargs} ({exc})") from None


def failure_record(path: Path) -> Path:
    """Where the frames the oracle raised on are recorded, beside the round's labelled file."""
    return path.with_name(path.stem + ".failed.json")


def _done_indices(existing: list, failures: list[dict]) -> set[int]:
    """The selection indices already answered: labelled (each frame notes its index; files written
    before frames did are in selection order) or recorded as failed."""
    done = {int(f.info.get("selection_index", k)) for k, f in enumerate(existing)}
    return done | {int(f["selection_index"]) for f in failures}


def label(selection: list[dict], oracle_config: OracleConfig, path: Path, round_index: int, log=print) -> dict:
    """Label the selected frames not yet answered with the oracle, appending each whole frame to
    ``path`` as soon as it is computed. A frame the oracle raises on is recorded (with the error)
    beside it and skipped with one line; it is not sent again. Returns the round's totals over
    every frame answered (now or before): labelled, failed, oracle calls made now, and the oracle's
    wall and CPU seconds (stored per frame, so a resumed round reports the same cost)."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from stableff.md.records import RecordFile, frame_text

    settings = json.dumps({"calculator": oracle_config.calculator, "kwargs": oracle_config.kwargs}, sort_keys=True)
    existing = ase.io.read(path, ":") if path.is_file() and path.stat().st_size else []
    for k, frame in enumerate(existing):
        if frame.info.get("oracle") != settings:
            raise StableFFError(f"{path}, frame {k}: labelled by another oracle ({frame.info.get('oracle')}, now {settings}); "
                                "frames of two oracles would be mixed: choose another --out, or move the file away to label again")
    record = failure_record(path)
    failures = (read_json(record) or {}).get("failures", [])
    done = _done_indices(existing, failures)
    todo = [(k, entry) for k, entry in enumerate(selection) if k not in done]
    calls = 0
    if todo:
        oracle = make_oracle(oracle_config)
        from tqdm import tqdm

        with RecordFile(path, offset=path.stat().st_size if path.is_file() else None) as out:
            for k, entry in tqdm(todo, desc=f"round {round_index}: oracle", unit="call", leave=False):
                atoms = ase.io.read(entry["run"] + "/trajectory.extxyz", index=entry["frame"])
                atoms.calc = oracle
                t0, c0 = time.perf_counter(), time.process_time()
                calls += 1
                try:
                    energy = atoms.get_potential_energy()
                    forces = atoms.get_forces()
                except Exception as exc:  # this frame only: recorded, skipped, never sent again
                    seconds = time.perf_counter() - t0
                    failures.append({"selection_index": k, "run": entry["run"], "frame": entry["frame"], "time_ps": entry["time_ps"],
                                     "error": f"{type(exc).__name__}: {exc}", "oracle": settings, "seconds": seconds})
                    write_json_atomic({"failures": failures}, record)
                    log(f"  oracle {oracle_config.calculator} failed on frame {entry['frame']} of {entry['run']}/trajectory.extxyz "
                        f"({type(exc).__name__}: {exc}): recorded in {record}, skipped")
                    continue
                labelled = atoms.copy()
                labelled.info = {"oracle": settings, "round": round_index, "selection_index": k, "source": entry["run"],
                                 "source_frame": entry["frame"], "time_ps": entry["time_ps"], "disagreement_eV_per_A": entry["disagreement_eV_per_A"],
                                 "oracle_seconds": time.perf_counter() - t0, "oracle_cpu_seconds": time.process_time() - c0}
                labelled.calc = SinglePointCalculator(labelled, energy=energy, forces=forces)
                out.write(frame_text(labelled, energy, forces))
                existing.append(labelled)
    if selection and not existing and len(failures) >= len(selection):
        raise StableFFError(f"oracle {oracle_config.calculator} failed on every one of the {len(selection)} frames of round {round_index} "
                            f"(first: {failures[0]['error']}); they are recorded in {record}: fix the oracle and delete that file to send them again")
    totals = {"labelled": len(existing), "failed": len(failures), "calls_now": calls,
              "oracle_seconds": sum(float(f.info.get("oracle_seconds", 0.0)) for f in existing) + sum(f["seconds"] for f in failures),
              "oracle_cpu_seconds": sum(float(f.info.get("oracle_cpu_seconds", 0.0)) for f in existing)}
    if calls:
        log(f"  oracle: {calls} call(s) now; round {round_index}: {totals['labelled']} frame(s) labelled, {totals['failed']} failed, "
            f"{totals['oracle_seconds']:.1f} s of oracle time")
    return totals
