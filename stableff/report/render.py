"""The study report: summary table (terminal, HTML, Markdown) and its plots."""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path

import numpy as np

from stableff.analysis.survival import median_text
from stableff.io import read_json
from stableff.layout import THERMO_FILE, StudyRun
from stableff.study.conditions import Condition
from stableff.report import plots


def _fmt(stat, digits=1) -> str:
    if not stat:
        return "-"
    if stat.get("pooled"):  # one figure over every run of all seeds (not a mean over seeds)
        if "median_ps" in stat:
            return median_text(stat, stat["run_length_ps"]).replace(" ps", "")
        return f"{stat['value']:.{digits}f}"
    if stat.get("n", 1) > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def table_columns(summary: dict) -> list[tuple[str, str, int]]:
    """(row key, header with unit, digits)."""
    columns = [
        ("emae_ID_meV_per_atom", "EMAE ID (meV/atom)", 2), ("emae_OOD_meV_per_atom", "EMAE OOD (meV/atom)", 2),
        ("fmae_ID_meV_per_A", "FMAE ID (meV/Å)", 1), ("fmae_OOD_meV_per_A", "FMAE OOD (meV/Å)", 1),
        ("corr_mean_over_layers", "mean corr (|R|)", 3),
    ]
    for condition in summary["conditions"]:
        columns.append((f"stability_index_{condition}", f"SI {condition}", 2))
        columns.append((f"median_time_to_failure_ps_{condition}", f"median t_fail {condition}, pooled KM [95 % CI] (ps)", 3))
        columns.append((f"rmst_ps_{condition}", f"RMST {condition}, pooled (ps)", 3))
        columns.append((f"rmst_ps_per_seed_{condition}", f"RMST {condition}, per seed (ps)", 3))
    columns += [("train_seconds", "training time (s)", 1), ("median_step_ms", "median time per step (ms)", 1),
                ("step_time_ratio", "step time / baseline's", 3)]
    if any(row.get("oracle_calls") for row in summary["rows"]):
        columns.append(("oracle_calls", "oracle calls", 0))
    return columns


def terminal_table(summary: dict) -> str:
    columns = table_columns(summary)
    header = ["model", "variant"] + [c[1] for c in columns]
    body = [[row["model"], row["variant"]] + [_fmt(row.get(key), digits) for key, _, digits in columns] for row in summary["rows"]]
    # transpose: one line per quantity reads better in a terminal than a very wide table
    width = max(len(h) for h in header)
    col_width = max(max(len(x) for x in line) for line in body) + 2
    lines = []
    for k, name in enumerate(header):
        lines.append(f"{name:<{width}}  " + "".join(f"{line[k]:>{col_width}}" for line in body))
    return "\n".join(lines)


def _read_metrics(run_dir: Path) -> list[dict]:
    path = StudyRun(run_dir).metrics
    if not path.is_file():
        return []
    with open(path) as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def make_plots(summary: dict, out_dir: Path) -> dict[str, list[Path]]:
    """All report figures from what the study computed; returns section name -> PNG paths."""
    figures: dict[str, list[Path]] = {}
    plot_dir = out_dir / "plots"
    runs = summary["runs"]
    models = list(dict.fromkeys(r["model"] for r in runs))
    first_seed = summary["seeds"][0]

    figures["Learning curves"] = [
        plots.learning_curves(
            {variant: [h for h in (_read_metrics(Path(r["path"])) for r in runs if r["model"] == model and r["variant"] == variant) if h]
             for variant in summary["variants"]},
            plot_dir / f"learning_{model}.png", f"{model}: learning curves (every seed)",
        )
        for model in models
    ]

    # parity plots (first seed), labelled with the stored metrics
    paths = []
    for r in [x for x in runs if x["seed"] == first_seed]:
        for kind in ("ID", "OOD"):
            npz = StudyRun(r["path"]).parity(kind)
            if npz.is_file() and kind in r["accuracy"]:
                data = dict(np.load(npz))
                prediction = {k: data.get(k) for k in ("energy_pred", "energy_ref", "num_atoms", "forces_pred", "forces_ref", "species")}
                paths.append(plots.parity_plot(prediction, r["accuracy"][kind], f"{r['model']} {r['variant']} (seed {first_seed}), {kind} test set", plot_dir / f"parity_{r['model']}_{r['variant']}_{kind}.png"))
    figures["Parity plots"] = paths

    # correlation: bars (mean ± spread over seeds) and heatmaps (first seed)
    paths = []
    for model in models:
        series = {}
        for row in [x for x in summary["rows"] if x["model"] == model]:
            series[row["variant"]] = ([s["mean"] for s in row["corr_by_layer"]], [s["std"] for s in row["corr_by_layer"]])
        paths.append(plots.correlation_bars(series, plot_dir / f"correlation_bars_{model}.png", f"{model}: edge-feature correlation by layer (mean ± spread over seeds)"))
        for r in [x for x in runs if x["model"] == model and x["seed"] == first_seed]:
            npz = StudyRun(r["path"]).correlation_matrices
            if npz.is_file():
                data = np.load(npz)
                matrices = [data[f"arr_{k}"] for k in range(len(data.files))]
                paths.append(plots.correlation_heatmaps(matrices, r["correlation"]["corr_mean"], plot_dir / f"correlation_heatmaps_{model}_{r['variant']}.png", f"{model} {r['variant']} (seed {first_seed}): R per layer"))
    figures["Edge-feature correlation"] = paths

    # Kaplan-Meier survival with 95 % bands per condition, variants overlaid (pooled over seeds and starts)
    paths = []
    for model, by_condition in summary.get("survival", {}).items():
        for condition, by_variant in by_condition.items():
            curves = {f"{variant} ({curve['n_runs']} runs)": curve for variant, curve in by_variant.items()}
            paths.append(plots.survival_curves(curves, plot_dir / f"survival_{model}_{Condition.parse(condition).file_part}.png", f"{model}: survival, {Condition.parse(condition).label}"))
    figures["Survival of MD runs (Kaplan-Meier)"] = paths

    # temperature and minimum-distance traces (first seed, each condition)
    paths = []
    for model in models:
        for condition in summary["conditions"]:
            thermo = {}
            for r in [x for x in runs if x["model"] == model and x["seed"] == first_seed]:
                for rep in r["stability"].get(condition, {}).get("replicas", [])[:4]:
                    thermo[f"{r['variant']} {rep['start']} #{rep['replica']}"] = Path(rep["path"]) / THERMO_FILE
            if thermo:
                parsed = Condition.parse(condition)
                paths.append(plots.md_traces(thermo, plot_dir / f"traces_{model}_{parsed.file_part}.png", parsed.temperature_K, f"{model}, {parsed.label} (seed {first_seed})"))
    figures["Temperature and closest-contact traces"] = paths

    # RDF of the MD runs against the reference data, as computed by the study's structure stage
    paths = []
    for r in [x for x in runs if x["seed"] == first_seed and x.get("structure")]:
        stored = read_json(StudyRun(r["path"]).structure)
        if stored is None:
            continue
        s = stored["structure"]
        result = {"r_A": np.array(s["r_A"]), "g": {k: np.array(v) for k, v in s["g"].items()}, "periodic": s.get("periodic", True)}
        reference = {"r_A": np.array(s["reference_r_A"]), "g": {k: np.array(v) for k, v in s["reference_g"].items()}}
        paths.append(plots.rdf_plot(result, plot_dir / f"rdf_{r['model']}_{r['variant']}.png", reference, f"{r['model']} {r['variant']}: MD {Condition.parse(s['condition']).text} vs reference data"))
    figures["Structure of the MD runs (RDF)"] = paths

    # dimer probes and in-situ scans (first seed, one read of each probe.json): holes next to the failures they explain
    paths, in_situ_paths = [], []
    for r in [x for x in runs if x["seed"] == first_seed]:
        stored = read_json(StudyRun(r["path"]).probe)
        if stored is None:
            continue
        paths.append(plots.dimer_plot(stored["probe"]["dimers"], plot_dir / f"dimers_{r['model']}_{r['variant']}.png", f"{r['model']} {r['variant']} (seed {first_seed}): dimer curves"))
        scans = stored["probe"].get("in_situ") or {}
        if not scans:
            continue
        # the scans with a hole, or those of the first start structure
        chosen = [dict(s, pair=f"{s['pair']} in {start}") for start, found in scans.items() for s in found if s["hole"] is not None][:9]
        if not chosen:
            start = next(iter(scans))
            chosen = [dict(s, pair=f"{s['pair']} in {start}") for s in scans[start]]
        in_situ_paths.append(plots.dimer_plot(chosen, plot_dir / f"in_situ_{r['model']}_{r['variant']}.png", f"{r['model']} {r['variant']} (seed {first_seed}): in-situ scans",
                                              ylabel="E(d) - E(start) (eV)", marker_label="in the start structure"))
    figures["Dimer probes (holes: attraction below the closest training distance)"] = paths
    figures["In-situ scans (closest pair of each species pair pushed together inside a start structure, the rest fixed)"] = in_situ_paths
    return figures


def holes_text(summary: dict, model: str, variant: str) -> str:
    """Dimer holes per seed, and in-situ holes per pair: in how many start structures of how many
    (all seeds), with the deepest."""
    parts, in_situ, scanned = [], {}, 0
    for r in summary["runs"]:
        if r["model"] == model and r["variant"] == variant:
            for pair, hole in (r.get("holes") or {}).items():
                parts.append(f"{pair} {hole['depth_eV']:.2f} eV at {hole['radius_A']:.2f} A (seed {r['seed']})")
            scanned += r.get("in_situ_starts", 0)
            for start, found in (r.get("in_situ_holes") or {}).items():
                for pair, hole in found.items():
                    in_situ.setdefault(pair, []).append((hole["depth_eV"], hole["radius_A"], start, r["seed"]))
    text = "dimer holes: " + (", ".join(parts) if parts else "none")
    if scanned:
        shown = []
        for pair, found in in_situ.items():
            depth, radius, start, seed = max(found)
            shown.append(f"{pair} in {len(found)} of {scanned} (deepest {depth:.2f} eV at {radius:.2f} A, {start}, seed {seed})")
        text += "; in-situ holes (start structures, all seeds): " + (", ".join(shown) if shown else "none")
    return text


def _image_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def write_report(summary: dict, out_dir: Path, figures: dict[str, list[Path]]) -> tuple[Path, Path]:
    """report.html (self-contained) and report.md (images linked from plots/)."""
    columns = table_columns(summary)
    plan = summary["stability_plan"]
    intro = (
        f"Study <b>{html.escape(summary['name'])}</b>: variants {', '.join(summary['variants'])}; training seeds "
        f"{', '.join(map(str, summary['seeds']))} (same seeds and budget for every variant). Stability: {plan['replicas']} replicas per start "
        f"structure, {plan['time_ps']:g} ps of {plan['ensemble']} MD at {', '.join(f'{t:g} K' for t in plan['temperatures_K'])}, "
        "reference-free failure criteria. Numbers are mean ± standard deviation over training seeds, except those marked pooled "
        "(one figure over every run of all seeds and starts). Median t_fail = the Kaplan-Meier median with its 95 % interval "
        "(not reached: more than half the runs survived). SI = stability index "
        "(1 = every run survived the whole run); RMST = restricted mean survival time up to the run length (area under the "
        "Kaplan-Meier curve, all seeds and starts pooled); ID / OOD = in / out of distribution. Verdicts: RMST difference with a "
        "95 % hierarchical-bootstrap interval (training seeds, then replicas), log-rank test stratified by start structure; "
        "accuracy and correlation differences paired by training seed (t interval)."
    )
    # one row per quantity, one column per (model, variant): reads well however many conditions there are
    head = "<th>quantity</th>" + "".join(f"<th>{html.escape(row['model'])}<br>{html.escape(row['variant'])}</th>" for row in summary["rows"])
    body = ""
    for key, name, digits in columns:
        body += f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{html.escape(_fmt(row.get(key), digits))}</td>" for row in summary["rows"]) + "</tr>\n"
    failures = ""
    for row in summary["rows"]:
        parts = [f"{Condition.parse(c).label}: " + (", ".join(f"{k} {v}" for k, v in row.get(f"failures_{c}", {}).items()) or "none") for c in summary["conditions"]]
        failures += f"<li>{html.escape(row['model'])} {html.escape(row['variant'])}: {html.escape('; '.join(parts))}; {html.escape(holes_text(summary, row['model'], row['variant']))}</li>"
    verdicts = "".join(f"<li>{html.escape(v)}</li>" for v in summary["verdicts"]) or "<li>only one variant: nothing to compare</li>"
    warnings = summary.get("committee_warnings") or []
    warning_html = ("<h3>Committee warnings: does the seeds' force disagreement foresee a failure?</h3><ul>"
                    + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul>") if warnings else ""
    sections = ""
    for title, paths in figures.items():
        if paths:
            sections += f"<h2>{html.escape(title)}</h2>\n<div class='figs'>" + "".join(_image_tag(p) for p in paths) + "</div>\n"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>stableff study: {html.escape(summary['name'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; font-size: 0.86em; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 7px; text-align: right; }}
th {{ background: #f0f3f7; }} td:first-child {{ text-align: left; }}
.figs img {{ max-width: 100%; margin: 0.4em 0; border: 1px solid #eee; }}
</style></head><body>
<h1>stableff study: {html.escape(summary['name'])}</h1>
<p>{intro}</p>
<h2>Summary</h2>
<table><thead><tr>{head}</tr></thead><tbody>
{body}</tbody></table>
<h3>Is the difference real? (effect, 95 % interval, test)</h3><ul>{verdicts}</ul>
<h3>Failures by reason (all seeds and replicas) and holes</h3><ul>{failures}</ul>
{warning_html}
{sections}
<p style="color:#777">Made by stableff. Method: Zeng et al., arXiv:2502.12548 (2025); definitions in stableff's docs/method.md.</p>
</body></html>
"""
    html_path = out_dir / "report.html"
    html_path.write_text(page)
    md = [f"# stableff study: {summary['name']}", "", intro.replace("<b>", "**").replace("</b>", "**"), "", "## Summary", ""]
    header = ["quantity"] + [f"{row['model']} {row['variant']}" for row in summary["rows"]]
    md.append("| " + " | ".join(header) + " |")
    md.append("|" + "---|" * len(header))
    for key, name, digits in columns:
        md.append("| " + " | ".join([name] + [_fmt(row.get(key), digits) for row in summary["rows"]]) + " |")
    md += ["", "## Is the difference real?", ""] + [f"- {v}" for v in summary["verdicts"]] + [""]
    md += ["## Failures by reason and holes", ""]
    for row in summary["rows"]:
        parts = [f"{c}: " + (", ".join(f"{k} {v}" for k, v in row.get(f"failures_{c}", {}).items()) or "none") for c in summary["conditions"]]
        md.append(f"- {row['model']} {row['variant']}: {'; '.join(parts)}; {holes_text(summary, row['model'], row['variant'])}")
    md.append("")
    if warnings:
        md += ["## Committee warnings", ""] + [f"- {w}" for w in warnings] + [""]
    for title, paths in figures.items():
        if paths:
            md += [f"## {title}", ""] + [f"![{p.stem}](plots/{p.name})" for p in paths] + [""]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md))
    return html_path, md_path


def write_study_report(summary: dict, out_dir) -> tuple[Path, Path]:
    """Every figure and the HTML and Markdown reports of a finished study (its summary.json content)."""
    out_dir = Path(out_dir)
    return write_report(summary, out_dir, make_plots(summary, out_dir))
