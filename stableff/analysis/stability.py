"""Stability index, time to failure and Kaplan-Meier survival (DESIGN.md).

    SI = (1/R) sum_r t_fail_r / T_run   in [0, 1]

t_fail of a run is the time of its first failing frame, or the run length if none (censored).
"""

from __future__ import annotations

import collections

import numpy as np


def stability_index(times_ps, run_length_ps: float) -> float:
    times = np.minimum(np.asarray(times_ps, dtype=float), run_length_ps)
    return float(np.mean(times / run_length_ps))


def kaplan_meier(times_ps, failed) -> tuple[np.ndarray, np.ndarray]:
    """Survival curve S(t): step function given at the event times (starting at t = 0, S = 1).

    Censored runs leave the risk set without lowering S.
    """
    times = np.asarray(times_ps, dtype=float)
    failed = np.asarray(failed, dtype=bool)
    curve_t, curve_s = [0.0], [1.0]
    survival = 1.0
    for t in np.unique(times[failed]):
        at_risk = np.sum(times >= t)
        events = np.sum((times == t) & failed)
        survival *= 1.0 - events / at_risk
        curve_t.append(float(t))
        curve_s.append(float(survival))
    return np.array(curve_t), np.array(curve_s)


def summarise_replicas(replicas: list[dict]) -> dict:
    """SI, median / mean t_fail, failures by reason, and KM curve for a set of replica summaries."""
    if not replicas:
        return {}
    run_length = max(r["run_length_ps"] for r in replicas)
    times = [r["time_to_failure_ps"] for r in replicas]
    failed = [bool(r["failed"]) for r in replicas]
    km_t, km_s = kaplan_meier(times, failed)
    return {
        "stability_index": stability_index(times, run_length),
        "median_time_to_failure_ps": float(np.median(times)),
        "mean_time_to_failure_ps": float(np.mean(times)),
        "run_length_ps": run_length,
        "n_replicas": len(replicas),
        "n_failed": int(sum(failed)),
        "failures_by_reason": dict(collections.Counter(r["reason"] for r in replicas if r["failed"])),
        "kaplan_meier": {"time_ps": km_t.tolist(), "survival": km_s.tolist()},
    }


def stability_report(replicas: list[dict]) -> dict:
    """Overall summary plus one per start structure, and the per-replica table (JSON-ready)."""
    report = summarise_replicas(replicas)
    starts = sorted({r["start"] for r in replicas}, key=[r["start"] for r in replicas].index)
    report["by_start"] = {s: summarise_replicas([r for r in replicas if r["start"] == s]) for s in starts}
    report["replicas"] = [
        {k: r.get(k) for k in ("start", "replica", "seed", "temperature_K", "time_to_failure_ps", "failed", "reason", "detail", "steps", "ms_per_step", "path")}
        for r in replicas
    ]
    return report
