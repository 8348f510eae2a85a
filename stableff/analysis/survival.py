"""Survival statistics of MD runs (docs/method.md, "Comparing stability between variants").

Times to failure are right-censored at the run length: a run that did not fail says only that
t_fail > T. Per variant: the Kaplan-Meier survival curve with a 95 % band (scipy.stats.ecdf, log-log
Greenwood band) and the restricted mean survival time

    RMST(T) = integral_0^T S(t) dt        (the censoring-aware form of SI x T);

between a variant and the baseline: the RMST difference with a 95 % interval from a hierarchical
bootstrap (training seeds, then replicas within each seed: replicas of one trained model are not
independent), and the log-rank test stratified by start structure (per stratum observed minus
expected failures and their hypergeometric variance, summed; two-sided normal p-value). With one
stratum the statistic equals scipy.stats.logrank's (checked in the tests).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy import stats


def _censored(times, failed) -> stats.CensoredData:
    times, failed = np.asarray(times, float), np.asarray(failed, bool)
    return stats.CensoredData(uncensored=times[failed], right=times[~failed])


def kaplan_meier(times, failed, confidence: float = 0.95) -> dict:
    """Kaplan-Meier S(t) as steps from (0, 1) with a pointwise band, and the censoring times.

    Returns {"time_ps", "survival", "lower", "upper", "censored_ps"}: S(t) = survival[k] for
    time_ps[k] <= t < time_ps[k+1].
    """
    times, failed = np.asarray(times, float), np.asarray(failed, bool)
    out = {"time_ps": [0.0], "survival": [1.0], "lower": [1.0], "upper": [1.0], "censored_ps": times[~failed].tolist()}
    if not failed.any():
        return out
    result = stats.ecdf(_censored(times, failed))
    with warnings.catch_warnings():
        # where S(t) is 0 or 1 the log-log band is undefined (scipy warns); it is then [0, 1]-clamped below
        warnings.simplefilter("ignore", RuntimeWarning)
        band = result.sf.confidence_interval(confidence, method="log-log")
    event_times = np.unique(times[failed])
    keep = np.isin(result.sf.quantiles, event_times)
    out["time_ps"] += result.sf.quantiles[keep].tolist()
    out["survival"] += result.sf.probabilities[keep].tolist()
    out["lower"] += np.nan_to_num(band.low.probabilities[keep], nan=0.0).tolist()
    out["upper"] += np.nan_to_num(band.high.probabilities[keep], nan=1.0).tolist()
    return out


def median_survival(times, failed, confidence: float = 0.95) -> dict:
    """The Kaplan-Meier median time to failure: the first time S(t) <= 1/2, with the interval of
    times whose pointwise band holds 1/2 (Brookmeyer and Crowley 1982: from the first time the
    band's lower limit is <= 1/2 to the first time its upper limit is), all in ps. Where S(t) stays above 1/2
    up to the end of the runs the median is not reached: ``median_ps`` None and ``reached`` False
    (and an interval end that is not reached is None too).

    Returns {"median_ps", "low_ps", "high_ps", "reached", "confidence"}."""
    curve = kaplan_meier(times, failed, confidence)
    time_ps = np.asarray(curve["time_ps"])

    def first_at_or_below_half(values) -> float | None:
        below = np.nonzero(np.asarray(values) <= 0.5)[0]
        return float(time_ps[below[0]]) if len(below) else None

    median = first_at_or_below_half(curve["survival"])
    return {"median_ps": median, "low_ps": first_at_or_below_half(curve["lower"]), "high_ps": first_at_or_below_half(curve["upper"]),
            "reached": median is not None, "confidence": confidence}


def median_text(median: dict, run_length_ps: float) -> str:
    """``0.250 ps [0.200, 0.500]`` or ``not reached (S > 0.5 at 0.4 ps)``: the KM median as printed."""
    if not median["reached"]:
        return f"not reached (S > 0.5 at {run_length_ps:g} ps)"
    high = f"{median['high_ps']:.3f}" if median["high_ps"] is not None else "not reached"
    low = f"{median['low_ps']:.3f}" if median["low_ps"] is not None else "-"
    return f"{median['median_ps']:.3f} ps [{low}, {high}]"


def restricted_mean_survival(times, failed, horizon: float) -> float:
    """RMST up to ``horizon``: the area under the Kaplan-Meier curve from 0 to the horizon (ps)."""
    times, failed = np.asarray(times, float), np.asarray(failed, bool)
    return _rmst_steps(times, failed, horizon)


def _rmst_steps(times: np.ndarray, failed: np.ndarray, horizon: float) -> float:
    # product-limit estimate written out with numpy (the bootstrap calls it thousands of times;
    # the tests check it against scipy.stats.ecdf)
    if len(times) == 0:
        return float("nan")
    event_times = np.unique(times[failed & (times <= horizon)])
    if len(event_times) == 0:
        return float(horizon)
    at_risk = (times[None, :] >= event_times[:, None]).sum(1)
    events = ((times[None, :] == event_times[:, None]) & failed[None, :]).sum(1)
    survival = np.cumprod(1.0 - events / at_risk)
    edges = np.concatenate([[0.0], event_times, [horizon]])
    levels = np.concatenate([[1.0], survival])
    return float(np.sum(levels * np.diff(edges)))


@dataclasses.dataclass
class LogRank:
    statistic: float  # (O - E) / sqrt(V) of the variant (positive: more failures than expected)
    pvalue: float  # two-sided
    observed: float  # failures of the variant
    expected: float  # expected under equal hazards
    strata: int


def logrank_stratified(times_a, failed_a, strata_a, times_b, failed_b, strata_b) -> LogRank:
    """Log-rank test of sample a against sample b, stratified (per-stratum sums of O - E and V)."""
    times_a, failed_a, strata_a = np.asarray(times_a, float), np.asarray(failed_a, bool), np.asarray(strata_a)
    times_b, failed_b, strata_b = np.asarray(times_b, float), np.asarray(failed_b, bool), np.asarray(strata_b)
    o_minus_e, variance, observed, expected = 0.0, 0.0, 0.0, 0.0
    strata = sorted(set(strata_a.tolist()) & set(strata_b.tolist()), key=str)
    for stratum in strata:
        ta, fa = times_a[strata_a == stratum], failed_a[strata_a == stratum]
        tb, fb = times_b[strata_b == stratum], failed_b[strata_b == stratum]
        t_all = np.concatenate([ta, tb])
        f_all = np.concatenate([fa, fb])
        for t in np.unique(t_all[f_all]):
            n_a, n = float(np.sum(ta >= t)), float(np.sum(t_all >= t))
            d_a, d = float(np.sum((ta == t) & fa)), float(np.sum((t_all == t) & f_all))
            expected_a = d * n_a / n
            o_minus_e += d_a - expected_a
            observed += d_a
            expected += expected_a
            if n > 1:
                variance += d * (n_a / n) * (1 - n_a / n) * (n - d) / (n - 1)
    if variance <= 0:
        return LogRank(float("nan"), float("nan"), observed, expected, len(strata))
    z = o_minus_e / np.sqrt(variance)
    return LogRank(float(z), float(2 * stats.norm.sf(abs(z))), observed, expected, len(strata))


def bootstrap_rmst_difference(groups_a: dict, groups_b: dict, horizon: float, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """RMST(a) - RMST(b) with a hierarchical percentile bootstrap interval.

    ``groups_*`` map a training seed to (times, failed) arrays of its replicas. Each bootstrap draw
    resamples the training seeds shared by both variants (paired: the same seeds for a and b), then
    the replicas within each drawn seed, and pools them into one Kaplan-Meier curve per variant.
    """
    seeds = sorted(set(groups_a) & set(groups_b))
    pooled = lambda groups: (np.concatenate([groups[s][0] for s in seeds]), np.concatenate([groups[s][1] for s in seeds]).astype(bool))
    estimate = _rmst_steps(*pooled(groups_a), horizon) - _rmst_steps(*pooled(groups_b), horizon)
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    arrays_a = {s: (np.asarray(groups_a[s][0], float), np.asarray(groups_a[s][1], bool)) for s in seeds}
    arrays_b = {s: (np.asarray(groups_b[s][0], float), np.asarray(groups_b[s][1], bool)) for s in seeds}
    for k in range(n_boot):
        chosen = rng.choice(len(seeds), size=len(seeds), replace=True)
        values = []
        for arrays in (arrays_a, arrays_b):
            times, failed = [], []
            for c in chosen:
                t, f = arrays[seeds[c]]
                pick = rng.integers(0, len(t), size=len(t))
                times.append(t[pick])
                failed.append(f[pick])
            values.append(_rmst_steps(np.concatenate(times), np.concatenate(failed), horizon))
        draws[k] = values[0] - values[1]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return {"difference_ps": float(estimate), "low_ps": float(low), "high_ps": float(high), "n_seeds": len(seeds), "n_boot": n_boot}


#: the equivalence margin of two MD engines: RMST difference within +-10 % of the run length
ENGINE_EQUIVALENCE_MARGIN = 0.10


def rmst_equivalence(times_a, failed_a, times_b, failed_b, horizon: float, margin_ps: float, alpha: float = 0.05, n_boot: int = 4000, seed: int = 0) -> dict:
    """Two one-sided tests (TOST) that RMST(a) - RMST(b) lies within +-``margin_ps``: equivalent
    at level ``alpha`` when the (1 - 2 alpha) percentile-bootstrap interval of the difference
    (replicas resampled within each group) lies inside the margin. Absence of a difference is not
    evidence of equivalence; this is. ``p_value``: the larger of the two one-sided bootstrap
    p-values (the fraction of draws beyond each margin)."""
    a = (np.asarray(times_a, float), np.asarray(failed_a, bool))
    b = (np.asarray(times_b, float), np.asarray(failed_b, bool))
    estimate = _rmst_steps(*a, horizon) - _rmst_steps(*b, horizon)
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for k in range(n_boot):
        pa, pb = rng.integers(0, len(a[0]), len(a[0])), rng.integers(0, len(b[0]), len(b[0]))
        draws[k] = _rmst_steps(a[0][pa], a[1][pa], horizon) - _rmst_steps(b[0][pb], b[1][pb], horizon)
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    p_value = float(max(np.mean(draws <= -margin_ps), np.mean(draws >= margin_ps)))
    return {"difference_ps": float(estimate), "low_ps": float(low), "high_ps": float(high), "margin_ps": float(margin_ps),
            "confidence": 1 - 2 * alpha, "p_value": p_value, "equivalent": bool(-margin_ps < low and high < margin_ps)}


def paired_difference(values_a: dict, values_b: dict, confidence: float = 0.95) -> dict | None:
    """Mean of a - b over the training seeds both have, with a t interval (scipy.stats.ttest_1samp)
    and its p-value; with one seed only the difference (no interval)."""
    seeds = sorted(set(values_a) & set(values_b))
    diffs = np.array([values_a[s] - values_b[s] for s in seeds if values_a[s] is not None and values_b[s] is not None], float)
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        return None
    out = {"difference": float(diffs.mean()), "n_seeds": int(len(diffs)), "low": None, "high": None, "pvalue": None}
    if len(diffs) >= 2 and np.std(diffs) > 0:
        test = stats.ttest_1samp(diffs, 0.0)
        interval = test.confidence_interval(confidence)
        out.update(low=float(interval.low), high=float(interval.high), pvalue=float(test.pvalue))
    return out
