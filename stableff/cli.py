"""The `stableff` command line. Each sub-command parses its arguments and calls the layer that does
the work; user errors end in one message on stderr and exit status 1."""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path


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

    config = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    result = Trainer(config, out, resume=args.resume).run()
    if result:
        print(f"done: best model {out / 'best.ckpt'}, last {out / 'last.ckpt'}, metrics {out / 'metrics.csv'}")
    return 0


def cmd_evaluate(args) -> int:
    from stableff.analysis.accuracy import evaluate_files

    results = evaluate_files(args.model, args.data, batch_size=args.batch_size, device=args.device)
    _print_accuracy_table(results, [str(p) for p in args.data])
    if args.plot:
        from stableff.report.plots import parity_plot

        for r in results:
            png = parity_plot(r["prediction"], r, Path(r["path"]).name, Path(args.plot) / f"parity_{Path(r['path']).stem}.png")
            print(f"parity plot: {png}")
    if args.json:
        payload = {"model": str(args.model), "files": [{k: v for k, v in r.items() if k != "prediction"} for r in results]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"metrics written to {args.json}")
    return 0


def cmd_correlation(args) -> int:
    from stableff.analysis.correlation import correlation_of_files

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
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"correlation written to {args.json}")
    return 0


def cmd_demo(args) -> int:
    """Train a small NequIP on the embedded acac data and evaluate it in and out of distribution."""
    import shutil

    from stableff.analysis.accuracy import evaluate_files
    from stableff.report.plots import learning_curves, parity_plot
    from stableff.train.checkpoint import load_checkpoint
    from stableff.train.config import load_config
    from stableff.train.loop import Trainer

    t0 = time.perf_counter()
    config_path = Path(str(resources.files("stableff.configs") / "demo_acac.yaml"))
    config = load_config(config_path, args.overrides)
    out = Path(args.out)
    run_dir = out / "nequip"
    resume = (run_dir / "last.ckpt").is_file()
    if args.fresh and out.exists():
        shutil.rmtree(out)
        resume = False
    print(f"stableff demo: NequIP on acetylacetone (embedded BOTNet data, MIT), output in {out}/")
    Trainer(config, run_dir, resume=resume).run()
    tests = ["acac:test_MD_300K", "acac:test_MD_600K"]
    results = evaluate_files(run_dir / "best.ckpt", tests)
    history = load_checkpoint(run_dir / "last.ckpt")["train_state"]["history"]
    learning_curves(history, out / "learning_curves.png", "NequIP on acac (train 300 K)")
    for r, name in zip(results, ("300K", "600K")):
        parity_plot(r["prediction"], r, f"acac test_MD_{name}", out / f"parity_{name}.png")
    print()
    print("Accuracy of the best model (EMA weights) on held-out DFT data:")
    _print_accuracy_table(results, ["test_MD_300K (in distribution)", "test_MD_600K (out of distribution)"])
    summary = {"files": [{k: v for k, v in r.items() if k != "prediction"} for r in results]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nplots: {out}/learning_curves.png, {out}/parity_300K.png, {out}/parity_600K.png; metrics: {out}/summary.json")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0


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
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("correlation", help="per-layer edge-feature correlation of a model over a dataset")
    p.add_argument("model", help="checkpoint (best.ckpt)")
    p.add_argument("data", nargs="+", help="structure files (labels not needed)")
    p.add_argument("--json", help="write per-layer correlation to this JSON file")
    p.add_argument("--plot", help="write heatmaps and a bar chart (PNG) into this folder")
    p.add_argument("--channels", choices=["all", "scalars"], default="all", help="invariant view of all channels (default) or l = 0 only")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_correlation)

    p = sub.add_parser("demo", help="the study on the embedded acetylacetone data")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--fresh", action="store_true", help="start over instead of reusing finished steps")
    p.add_argument("overrides", nargs="*", help="config overrides such as training.epochs=5")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from stableff.errors import StableFFError

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


if __name__ == "__main__":
    sys.exit(main())
