"""Stability index, time to failure and Kaplan-Meier survival (docs/method.md, "Stability index").

    SI = (1/R) sum_r t_fail_r / T_run   in [0, 1]

t_fail of a run is the time of its first failing frame, or the run length if none (censored).
"""

from __future__ import annotations

import collections

import numpy as np

from stableff.analysis.survival import kaplan_meier, median_survival, median_text, restricted_mean_survival


def stability_index(times_ps, run_length_ps: float) -> float:
    times = np.minimum(np.asarray(times_ps, dtype=float), run_length_ps)
    return float(np.mean(times / run_length_ps))


def summarise_replicas(replicas: list[dict]) -> dict:
    """SI, the Kaplan-Meier median time to failure (with its 95 % interval; None and
    ``median_time_to_failure_reached: false`` where S(t) stays above 1/2), mean of min(t_fail, T),
    RMST, failures by reason, and the KM curve of a set of replica summaries."""
    if not replicas:
        return {}
    run_length = max(r["run_length_ps"] for r in replicas)
    times = [r["time_to_failure_ps"] for r in replicas]
    failed = [bool(r["failed"]) for r in replicas]
    return {
        "stability_index": stability_index(times, run_length),
        **_median_entries(median_survival(times, failed)),
        "mean_time_to_failure_ps": float(np.mean(times)),
        "rmst_ps": restricted_mean_survival(times, failed, run_length),
        "run_length_ps": run_length,
        "n_replicas": len(replicas),
        "n_failed": int(sum(failed)),
        "failures_by_reason": dict(collections.Counter(r["reason"] for r in replicas if r["failed"])),
        "kaplan_meier": kaplan_meier(times, failed),
    }


def _median_entries(median: dict) -> dict:
    return {"median_time_to_failure_ps": median["median_ps"], "median_time_to_failure_reached": median["reached"],
            "median_time_to_failure_interval_ps": [median["low_ps"], median["high_ps"]]}


def median_of(summary: dict) -> str:
    """The Kaplan-Meier median of a summary as printed (``0.250 ps [0.200, 0.500]``, or ``not reached``)."""
    low, high = summary["median_time_to_failure_interval_ps"]
    median = {"median_ps": summary["median_time_to_failure_ps"], "low_ps": low, "high_ps": high, "reached": summary["median_time_to_failure_reached"]}
    return median_text(median, summary["run_length_ps"])


def index_text(summary: dict) -> str:
    """The stability index as printed: three decimals, and where that reads 1.000 although runs
    failed (at or just before the run's end, t_fail ~ T) it says so instead of looking perfect."""
    text = f"{summary['stability_index']:.3f}"
    if summary["n_failed"] and text == "1.000":
        text += f" (yet {summary['n_failed']} failed, at the end of the run: t_fail ~ run length)"
    return text


def stability_report(replicas: list[dict]) -> dict:
    """Overall summary plus one per start structure, and the per-replica table (JSON-ready)."""
    report = summarise_replicas(replicas)
    starts = sorted({r["start"] for r in replicas}, key=[r["start"] for r in replicas].index)
    report["by_start"] = {s: summarise_replicas([r for r in replicas if r["start"] == s]) for s in starts}
    report["replicas"] = [
        {k: r.get(k) for k in ("start", "replica", "seed", "temperature_K", "run_length_ps", "time_to_failure_ps", "failed", "reason", "detail", "steps", "ms_per_step", "path", "fingerprint")}
        for r in replicas
    ]
    return report
