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


def warning_summary(replicas: list[dict]) -> dict | None:
    """How a committee's warnings (``uncertain`` runs, :mod:`stableff.md.committee`) relate to the
    failures of the runs it watched (None where none was watched): failures warned of before they
    happened, with the lead time t_fail - t_uncertain (median, range); failures warned of only at
    the failing frame itself or not at all; warnings of runs that did not fail within the run
    (false alarms, as far as the run length shows) and stable runs without one."""
    watched = [r for r in replicas if "uncertain" in r]
    if not watched:
        return None
    failed = [r for r in watched if r["failed"]]
    early = [r for r in failed if r["uncertain"] and r["uncertain_time_ps"] < r["time_to_failure_ps"]]
    leads = sorted(r["time_to_failure_ps"] - r["uncertain_time_ps"] for r in early)
    at_failure = [r for r in failed if r["uncertain"] and r["uncertain_time_ps"] == r["time_to_failure_ps"]]
    stable = [r for r in watched if not r["failed"]]
    return {
        "n_runs": len(watched),
        "n_failed": len(failed),
        "n_warned_before_failure": len(early),
        "n_warned_at_failure": len(at_failure),
        "n_failures_without_warning": len(failed) - len(early) - len(at_failure),
        "n_false_alarms": sum(1 for r in stable if r["uncertain"]),
        "n_stable_without_warning": sum(1 for r in stable if not r["uncertain"]),
        "lead_time_ps": {"median": float(np.median(leads)), "min": leads[0], "max": leads[-1], "n": len(leads)} if leads else None,
        "threshold_eV_per_A": watched[0]["committee"]["threshold_eV_per_A"],
    }


def warnings_text(w: dict) -> str:
    """A committee warning summary in one line (counts, and the lead time where a failure was foreseen)."""
    lead = w["lead_time_ps"]
    lead = (f", lead time median {lead['median']:.3f} ps (range {lead['min']:.3f}-{lead['max']:.3f} ps)" if lead else "")
    return (f"{w['n_warned_before_failure']}/{w['n_failed']} failures warned of before they happened{lead}; "
            f"{w['n_warned_at_failure']} only at the failing frame, {w['n_failures_without_warning']} without warning; "
            f"{w['n_false_alarms']} warnings in the {w['n_runs'] - w['n_failed']} runs that did not fail "
            f"(threshold {w['threshold_eV_per_A']:.4f} eV/A)")


#: what the per-replica table of a stability report keeps of each summary
REPLICA_KEYS = ("start", "replica", "seed", "temperature_K", "run_length_ps", "time_to_failure_ps", "failed", "reason", "detail", "steps", "ms_per_step", "path", "fingerprint")
#: ... and of a run a committee watched
UNCERTAINTY_KEYS = ("committee", "uncertain", "uncertain_step", "uncertain_time_ps", "max_force_disagreement_eV_per_A")


def stability_report(replicas: list[dict]) -> dict:
    """Overall summary plus one per start structure, the committee's warnings where one watched the
    runs, and the per-replica table (JSON-ready)."""
    report = summarise_replicas(replicas)
    starts = sorted({r["start"] for r in replicas}, key=[r["start"] for r in replicas].index)
    report["by_start"] = {s: summarise_replicas([r for r in replicas if r["start"] == s]) for s in starts}
    warnings = warning_summary(replicas)
    if warnings is not None:
        report["committee_warnings"] = warnings
    report["replicas"] = [
        {k: r.get(k) for k in REPLICA_KEYS + (UNCERTAINTY_KEYS if "uncertain" in r else ())}
        for r in replicas
    ]
    return report
