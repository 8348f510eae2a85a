"""The study's numbers: the table (mean and spread over training seeds per model and variant) and
the comparisons of every variant with the baseline, with effect sizes, intervals and tests
(docs/method.md, "Comparing stability between variants"), and the verdict sentences made from them."""

from __future__ import annotations

import numpy as np

from stableff.study.conditions import Condition, sorted_conditions
from stableff.analysis.stability import warning_summary, warnings_text
from stableff.analysis.survival import bootstrap_rmst_difference, kaplan_meier, logrank_stratified, median_survival, paired_difference, restricted_mean_survival

#: significance level of every verdict
ALPHA = 0.05


def _mean_std(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}


def _replicas(runs, model, variant, condition) -> list[dict]:
    return [dict(rep, training_seed=r["seed"]) for r in runs if r["model"] == model and r["variant"] == variant
            for rep in r["stability"].get(condition, {}).get("replicas", [])]


def summarise_study(study, runs: list[dict]) -> dict:
    """Rows per (model, variant), pooled survival per condition, comparisons and verdicts."""
    conditions = sorted_conditions({k for r in runs for k in r["stability"]})
    rows, survival = [], {}
    for model in dict.fromkeys(r["model"] for r in runs):
        base_steps = {r["seed"]: r["median_step_seconds"] for r in runs if r["model"] == model and r["variant"] == "baseline"}
        for variant in dict.fromkeys(r["variant"] for r in runs if r["model"] == model):
            chosen = [r for r in runs if r["model"] == model and r["variant"] == variant]
            row = {"model": model, "variant": variant, "seeds": [r["seed"] for r in chosen]}
            for kind in ("ID", "OOD"):
                row[f"emae_{kind}_meV_per_atom"] = _mean_std([r["accuracy"].get(kind, {}).get("emae_meV_per_atom") for r in chosen])
                row[f"fmae_{kind}_meV_per_A"] = _mean_std([r["accuracy"].get(kind, {}).get("fmae_meV_per_A") for r in chosen])
            row["corr_mean_over_layers"] = _mean_std([r["correlation"]["mean_over_layers"] for r in chosen])
            row["corr_by_layer"] = [_mean_std(list(v)) for v in zip(*[r["correlation"]["corr_mean"] for r in chosen])]
            for condition in conditions:
                reports = [r["stability"].get(condition) for r in chosen if r["stability"].get(condition)]
                row[f"stability_index_{condition}"] = _mean_std([s["stability_index"] for s in reports])
                replicas = _replicas(runs, model, variant, condition)
                if replicas:
                    times = [x["time_to_failure_ps"] for x in replicas]
                    failed = [x["failed"] for x in replicas]
                    horizon = min(x["run_length_ps"] for x in replicas)
                    # pooled over every run of every seed and start (labelled so), with the per-seed spread beside it
                    row[f"median_time_to_failure_ps_{condition}"] = {"pooled": True, "n_runs": len(replicas), "run_length_ps": horizon, **median_survival(times, failed)}
                    row[f"rmst_ps_{condition}"] = {"pooled": True, "value": restricted_mean_survival(times, failed, horizon), "n_runs": len(replicas)}
                    seeds = dict.fromkeys(x["training_seed"] for x in replicas)
                    row[f"rmst_ps_per_seed_{condition}"] = _mean_std([
                        restricted_mean_survival([x["time_to_failure_ps"] for x in replicas if x["training_seed"] == s],
                                                 [x["failed"] for x in replicas if x["training_seed"] == s], horizon) for s in seeds])
                    warnings = warning_summary(replicas)
                    if warnings is not None:
                        row[f"committee_warnings_{condition}"] = warnings
                    survival.setdefault(model, {}).setdefault(condition, {})[variant] = {**kaplan_meier(times, failed), "run_length_ps": horizon, "n_runs": len(replicas)}
                reasons: dict[str, int] = {}
                for s in reports:
                    for reason, count in s["failures_by_reason"].items():
                        reasons[reason] = reasons.get(reason, 0) + count
                row[f"failures_{condition}"] = reasons
            row["train_seconds"] = _mean_std([r["train_seconds"] for r in chosen])
            row["median_step_ms"] = _mean_std([1000 * r["median_step_seconds"] for r in chosen if r.get("median_step_seconds")])
            ratios = [r["median_step_seconds"] / base_steps[r["seed"]] for r in chosen if base_steps.get(r["seed"]) and r.get("median_step_seconds")]
            row["step_time_ratio"] = _mean_std(ratios)
            costs = [r["active"] for r in chosen if r.get("active")]
            if costs:  # shared by the seeds (one committee): the same figures in every seed's run
                row["active"] = costs[0]
                row["oracle_calls"] = _mean_std([costs[0]["oracle_calls"]])
            rows.append(row)
    comparisons = compare_variants(runs, conditions)
    return {
        "name": study.name, "seeds": study.seeds, "variants": study.variants, "conditions": conditions,
        "stability_plan": study.stability.model_dump(), "rows": rows, "survival": survival, "comparisons": comparisons,
        "runs": runs, "verdicts": comparison_notes(study.variants) + verdicts(comparisons) + cost_sentences(rows),
        "committee_warnings": warning_sentences(rows, conditions),
    }


def warning_sentences(rows: list[dict], conditions: list[str]) -> list[str]:
    """Per model, variant and condition: how the committee's warnings met the failures (pooled over
    seeds and starts), where a committee watched the runs."""
    sentences = []
    for row in rows:
        for condition in conditions:
            w = row.get(f"committee_warnings_{condition}")
            if w is not None:
                sentences.append(f"{row['model']}, {row['variant']}, MD {Condition.parse(condition).text} (pooled, {w['n_runs']} runs): {warnings_text(w)}.")
    return sentences


def cost_sentences(rows: list[dict]) -> list[str]:
    """What each active variant cost beside the training every variant pays: oracle calls and
    seconds, the trainings of every round, the exploration MD."""
    sentences = []
    for row in rows:
        cost = row.get("active")
        if not cost:
            continue
        base = next((r for r in rows if r["model"] == row["model"] and r["variant"] == "baseline"), None)
        baseline = f"; baseline: {base['train_seconds']['mean']:.3g} s" if base and base.get("train_seconds") else ""
        failed = f", {cost['oracle_failures']} raised and were skipped" if cost["oracle_failures"] else ""
        sentences.append(
            f"{row['model']}, {row['variant']}, cost: {cost['oracle_calls']} oracle calls ({cost['labelled_frames']} frames labelled{failed}; "
            f"{cost['oracle_seconds']:.3g} s of oracle time, {cost['oracle_cpu_seconds']:.3g} s CPU), {cost['rounds']} trainings per seed "
            f"({row['train_seconds']['mean']:.3g} s per seed in all{baseline}) and {cost['exploration_md_seconds']:.3g} s of exploration MD (wall seconds on this machine).")
    return sentences


def comparison_notes(variants: list[str]) -> list[str]:
    """What the comparison section says when a study cannot compare (no baseline, or nothing else)."""
    if "baseline" not in variants:
        return [f"no comparison: the study has no baseline variant (variants: {', '.join(variants)}); "
                "add baseline to variants to compare the remedies with it"]
    if len(variants) == 1:
        return ["no comparison: the study has only the baseline variant (add a remedy, e.g. decorrelated, to compare)"]
    return []


def compare_variants(runs: list[dict], conditions: list[str], n_boot: int = 2000) -> list[dict]:
    """Each non-baseline variant against the baseline of the same model: accuracy and correlation
    paired by seed; per condition RMST difference (hierarchical bootstrap) and stratified log-rank."""
    comparisons = []
    for model in dict.fromkeys(r["model"] for r in runs):
        base = {r["seed"]: r for r in runs if r["model"] == model and r["variant"] == "baseline"}
        if not base:
            continue
        for variant in dict.fromkeys(r["variant"] for r in runs if r["model"] == model and r["variant"] != "baseline"):
            other = {r["seed"]: r for r in runs if r["model"] == model and r["variant"] == variant}
            entry = {"model": model, "variant": variant, "metrics": {}, "stability": {}}
            metric_values = {
                "fmae_ID_meV_per_A": lambda r: r["accuracy"].get("ID", {}).get("fmae_meV_per_A"),
                "fmae_OOD_meV_per_A": lambda r: r["accuracy"].get("OOD", {}).get("fmae_meV_per_A"),
                "emae_ID_meV_per_atom": lambda r: r["accuracy"].get("ID", {}).get("emae_meV_per_atom"),
                "emae_OOD_meV_per_atom": lambda r: r["accuracy"].get("OOD", {}).get("emae_meV_per_atom"),
                "corr_mean_over_layers": lambda r: r["correlation"]["mean_over_layers"],
                "step_time_ratio": lambda r: r.get("median_step_seconds"),
            }
            for key, get in metric_values.items():
                a = {s: get(r) for s, r in other.items()}
                b = {s: get(r) for s, r in base.items()}
                if key == "step_time_ratio":  # cost as a ratio of median step times, paired by seed
                    a = {s: (a[s] / b[s] if a.get(s) and b.get(s) else None) for s in a}
                    b = {s: 1.0 for s in a}
                if any(v is None for v in a.values()) or any(v is None for v in b.values()):
                    continue
                result = paired_difference(a, b)
                if result is not None:
                    result["variant_mean"] = float(np.mean([v for s, v in a.items() if s in b]))
                    result["baseline_mean"] = float(np.mean([v for s, v in b.items() if s in a]))
                    entry["metrics"][key] = result
            for condition in conditions:
                rep_a = _replicas(runs, model, variant, condition)
                rep_b = _replicas(runs, model, "baseline", condition)
                if not rep_a or not rep_b:
                    continue
                horizon = min(x["run_length_ps"] for x in rep_a + rep_b)
                groups = lambda reps: {s: (np.array([x["time_to_failure_ps"] for x in reps if x["training_seed"] == s]),
                                           np.array([x["failed"] for x in reps if x["training_seed"] == s]))
                                       for s in dict.fromkeys(x["training_seed"] for x in reps)}
                boot = bootstrap_rmst_difference(groups(rep_a), groups(rep_b), horizon, n_boot=n_boot)
                test = logrank_stratified(
                    [x["time_to_failure_ps"] for x in rep_a], [x["failed"] for x in rep_a], [x["start"] for x in rep_a],
                    [x["time_to_failure_ps"] for x in rep_b], [x["failed"] for x in rep_b], [x["start"] for x in rep_b],
                )
                entry["stability"][condition] = {
                    "rmst_variant_ps": restricted_mean_survival([x["time_to_failure_ps"] for x in rep_a], [x["failed"] for x in rep_a], horizon),
                    "rmst_baseline_ps": restricted_mean_survival([x["time_to_failure_ps"] for x in rep_b], [x["failed"] for x in rep_b], horizon),
                    "rmst_difference_ps": boot["difference_ps"], "rmst_difference_low_ps": boot["low_ps"], "rmst_difference_high_ps": boot["high_ps"],
                    "logrank_statistic": test.statistic, "logrank_pvalue": test.pvalue, "strata": test.strata,
                    "n_seeds": boot["n_seeds"], "n_runs_variant": len(rep_a), "n_runs_baseline": len(rep_b),
                    "failed_variant": int(sum(x["failed"] for x in rep_a)), "failed_baseline": int(sum(x["failed"] for x in rep_b)),
                    "horizon_ps": horizon,
                }
            comparisons.append(entry)
    return comparisons


METRIC_TEXT = {
    "fmae_ID_meV_per_A": ("force MAE in distribution", "meV/A"),
    "fmae_OOD_meV_per_A": ("force MAE out of distribution", "meV/A"),
    "emae_ID_meV_per_atom": ("energy MAE in distribution", "meV/atom"),
    "emae_OOD_meV_per_atom": ("energy MAE out of distribution", "meV/atom"),
    "corr_mean_over_layers": ("mean edge-feature correlation", ""),
    "step_time_ratio": ("training time per optimiser step (ratio to baseline, medians)", "x"),
}


def _interval(low, high, unit="") -> str:
    return f"[{low:.3g}, {high:.3g}]{' ' + unit if unit else ''}"


def verdicts(comparisons: list[dict]) -> list[str]:
    """Plain sentences from the comparison numbers; each quotes effect, interval and test, and says
    when the data cannot decide."""
    sentences = []
    for entry in comparisons:
        who = f"{entry['model']}, {entry['variant']} vs baseline"
        for key, result in entry["metrics"].items():
            text, unit = METRIC_TEXT[key]
            u = f" {unit}" if unit and unit != "x" else ""
            if key == "step_time_ratio":
                numbers = f"{result['variant_mean']:.3g}x"
                diff = result["difference"]
            else:
                numbers = f"{result['variant_mean']:.3g} vs {result['baseline_mean']:.3g}{u}"
                diff = result["difference"]
            if result["low"] is None and diff == 0:
                sentences.append(f"{who}, {text}: {numbers}, identical in each of the {result['n_seeds']} seeds: the variant does not change it.")
                continue
            if result["low"] is None:
                sentences.append(f"{who}, {text}: {numbers}, difference {diff:+.3g}{u} from {result['n_seeds']} seed(s): no interval can be given, the data cannot decide.")
                continue
            significant = result["pvalue"] < ALPHA
            judged = "a real difference" if significant else "no difference demonstrated"
            sentences.append(
                f"{who}, {text}: {numbers}, difference {diff:+.3g}{u} {_interval(result['low'], result['high'], unit if unit != 'x' else '')} "
                f"(95 % CI, paired t over {result['n_seeds']} seeds, p = {result['pvalue']:.2g}): {judged}."
            )
        for condition, s in entry["stability"].items():
            where = Condition.parse(condition).text
            numbers = (f"RMST {s['rmst_variant_ps']:.3g} vs {s['rmst_baseline_ps']:.3g} ps, difference {s['rmst_difference_ps']:+.3g} ps "
                       f"{_interval(s['rmst_difference_low_ps'], s['rmst_difference_high_ps'], 'ps')}, log-rank p = {s['logrank_pvalue']:.2g} "
                       f"({s['n_seeds']} seeds, {s['n_runs_variant']} + {s['n_runs_baseline']} runs, {s['failed_variant']} + {s['failed_baseline']} failed)")
            if s["failed_variant"] + s["failed_baseline"] == 0:
                sentences.append(f"{who}, MD {where}: every run survived {s['horizon_ps']:g} ps in both: the runs are too short to tell them apart.")
                continue
            low, high, p = s["rmst_difference_low_ps"], s["rmst_difference_high_ps"], s["logrank_pvalue"]
            if np.isfinite(p) and p < ALPHA and (low > 0 or high < 0):
                direction = "longer" if s["rmst_difference_ps"] > 0 else "shorter"
                verdict = f"runs survive {direction}: {numbers}."
                if s["n_seeds"] < 3:
                    verdict += f" Only {s['n_seeds']} training seed(s): the seed-to-seed spread is barely sampled."
            else:
                verdict = f"no difference demonstrated: {numbers}; the data cannot decide."
            sentences.append(f"{who}, MD {where}: {verdict}")
    return sentences
