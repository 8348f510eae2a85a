"""PNG plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def parity_plot(prediction: dict, metrics: dict, title: str, path: str | Path) -> Path:
    """Energy-per-atom and force-component parity plots side by side, with MAEs in the legend."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    n = prediction["num_atoms"]
    e_ref = prediction["energy_ref"] / n
    e_pred = prediction["energy_pred"] / n
    offset = np.mean(e_ref)
    ax = axes[0]
    ax.scatter(e_ref - offset, e_pred - offset, s=6, alpha=0.6, label=f"EMAE {metrics['emae_meV_per_atom']:.2f} meV/atom")
    lims = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
    ax.plot(lims, lims, "k--", lw=0.8)
    ax.set_xlabel(f"DFT energy - {offset:.3f} (eV/atom)")
    ax.set_ylabel(f"model energy - {offset:.3f} (eV/atom)")
    ax.set_title("energy per atom")
    ax.legend(loc="upper left")
    ax = axes[1]
    species = np.repeat(prediction["species"], 3)
    f_ref = prediction["forces_ref"].ravel()
    f_pred = prediction["forces_pred"].ravel()
    from ase.data import chemical_symbols

    for z in np.unique(species):
        mask = species == z
        symbol = chemical_symbols[int(z)]
        ax.scatter(f_ref[mask], f_pred[mask], s=3, alpha=0.4, label=f"{symbol}: {metrics['fmae_by_species_meV_per_A'][symbol]:.0f} meV/A")
    lims = [min(f_ref.min(), f_pred.min()), max(f_ref.max(), f_pred.max())]
    ax.plot(lims, lims, "k--", lw=0.8)
    ax.set_xlabel("DFT force component (eV/A)")
    ax.set_ylabel("model force component (eV/A)")
    ax.set_title(f"forces, FMAE {metrics['fmae_meV_per_A']:.1f} meV/A")
    ax.legend(loc="upper left", markerscale=3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learning_curves(histories: dict[str, list[list[dict]]], path: str | Path, title: str = "") -> Path:
    """Validation FMAE and mean edge-feature correlation by epoch; ``histories[label]`` is a list of
    metrics.csv row lists (one per training seed), drawn in one colour per label."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for k, (label, runs) in enumerate(histories.items()):
        for n, history in enumerate(runs):
            epochs = [h["epoch"] for h in history]
            axes[0].plot(epochs, [h["val_fmae_meV_per_A"] for h in history], color=f"C{k}", alpha=0.8, label=label if n == 0 else None)
            axes[1].plot(epochs, [h.get("val_corr_mean", np.nan) for h in history], color=f"C{k}", alpha=0.8, label=label if n == 0 else None)
    axes[0].set_ylabel("validation FMAE (meV/A)")
    axes[1].set_ylabel("validation mean edge-feature correlation")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def correlation_heatmaps(matrices, corr_values, path: str | Path, title: str = "") -> Path:
    """One heatmap of the edge-feature correlation matrix R per layer (colour scale -1..1)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.0), squeeze=False)
    image = None
    for k, (ax, matrix) in enumerate(zip(axes[0], matrices)):
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"layer {k}: mean |R_ij| = {corr_values[k]:.3f}")
        ax.set_xlabel("channel")
        ax.set_ylabel("channel")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="R_ij")
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def correlation_bars(series: dict[str, tuple[list[float], list[float]]], path: str | Path, title: str = "") -> Path:
    """Bar chart of corr_l by layer; ``series`` maps a label to (means, stds), drawn side by side."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    width = 0.8 / max(len(series), 1)
    for k, (label, (means, stds)) in enumerate(series.items()):
        x = np.arange(len(means)) + (k - (len(series) - 1) / 2) * width
        ax.bar(x, means, width, yerr=stds, capsize=3, label=label)
    ax.set_xticks(np.arange(max(len(m) for m, _ in series.values())))
    ax.set_xlabel("interaction layer")
    ax.set_ylabel("edge-feature correlation mean |R_ij|")
    ax.set_ylim(0, None)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def survival_curves(curves: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """Kaplan-Meier survival S(t) per label with its 95 % band and censored runs marked (+);
    ``curves[label] = {"time_ps", "survival", "lower"?, "upper"?, "censored_ps"?, "run_length_ps"}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for k, (label, curve) in enumerate(curves.items()):
        t = list(curve["time_ps"]) + [curve["run_length_ps"]]
        s = list(curve["survival"]) + [curve["survival"][-1]]
        ax.step(t, s, where="post", color=f"C{k}", label=label)
        if "lower" in curve:
            low = list(curve["lower"]) + [curve["lower"][-1]]
            high = list(curve["upper"]) + [curve["upper"][-1]]
            ax.fill_between(t, low, high, step="post", color=f"C{k}", alpha=0.18, lw=0)
        censored = curve.get("censored_ps") or []
        if censored:
            level = np.interp(censored, t, s, right=s[-1])
            ax.plot(censored, level, "+", color=f"C{k}", ms=9, mew=1.5)
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("fraction of runs not yet failed")
    ax.set_ylim(-0.02, 1.05)
    ax.legend(title="shaded: 95 % band; +: censored", fontsize=8, title_fontsize=8)
    ax.set_title(title or "Kaplan-Meier survival of MD runs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def md_traces(thermo_files: dict[str, Path], path: str | Path, temperature_K: float | None = None, title: str = "") -> Path:
    """Temperature and minimum interatomic distance against time for several runs (thermo.csv files)."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.0))
    for label, thermo in thermo_files.items():
        with open(thermo) as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            continue
        t = [float(r["time_ps"]) for r in rows]
        axes[0].plot(t, [float(r["temperature_K"]) for r in rows], lw=0.8, label=label)
        axes[1].plot(t, [float(r["min_distance_A"]) for r in rows], lw=0.8, label=label)
    if temperature_K:
        axes[0].axhline(temperature_K, color="k", ls="--", lw=0.8)
    axes[0].set_ylabel("temperature (K)")
    axes[1].set_ylabel("minimum interatomic distance (A)")
    for ax in axes:
        ax.set_xlabel("time (ps)")
    if len(thermo_files) <= 10:
        axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panel_grid(count: int):
    """One small panel per species pair, three to a row (unused panels hidden)."""
    ncols = min(3, count)
    nrows = -(-count // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes


def rdf_plot(result: dict, path: str | Path, reference: dict | None = None, title: str = "") -> Path:
    """g(r) per species pair, with the reference dashed when given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = list(result["g"])
    fig, axes = _panel_grid(len(labels))
    for ax, label in zip(axes.flat, labels):
        ax.plot(result["r_A"], result["g"][label], label="trajectory")
        if reference is not None and label in reference["g"]:
            ax.plot(reference["r_A"], reference["g"][label], "k--", lw=0.9, label="reference")
        ax.set_title(label)
        ax.set_xlabel("r (A)")
        ax.set_ylabel("g(r)" if result.get("periodic", True) else "pair-distance density (1/A)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dimer_plot(curves: list[dict], path: str | Path, title: str = "", ylabel: str = "E(r) - E(separated) (eV)", marker_label: str | None = None) -> Path:
    """Dimer curves E(r) per species pair (or in-situ scans, which carry "distance_A": marked with
    ``marker_label``), the training minimum dashed, holes marked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = _panel_grid(len(curves))
    for ax, curve in zip(axes.flat, curves):
        r, e = np.array(curve["r_A"]), np.array(curve["energy_eV"])
        ax.plot(r, e, lw=1.2)
        low = min(e.min(), -1.0)
        high = max(min(e.max(), 20.0), 1.0)
        ax.set_ylim(low - 0.1 * abs(low), high)
        if curve["training_min_A"] is not None:
            ax.axvline(curve["training_min_A"], color="k", ls="--", lw=0.8, label="closest in training")
        if marker_label and "distance_A" in curve:
            ax.axvline(curve["distance_A"], color="tab:green", ls=":", lw=0.8, label=marker_label)
        if curve["hole"] is not None:
            hole = curve["hole"]
            ax.plot([hole["radius_A"]], [hole["energy_at_training_min_eV"] - hole["depth_eV"]], "rv", ms=8, label=f"hole: {hole['depth_eV']:.2f} eV at {hole['radius_A']:.2f} A")
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_title(curve["pair"])
        ax.set_xlabel("r (A)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def eos_plot(results: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """Energy per atom against volume per atom for each cell, with the Birch-Murnaghan V0 and B0."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, result in results.items():
        n = result["n_atoms"]
        v, e = np.array(result["volumes_A3"]) / n, np.array(result["energies_eV"]) / n
        text = f"{label}: V0 {result['V0_A3'] / n:.2f} A^3/atom, B0 {result['B0_GPa']:.0f} GPa" if "B0_GPa" in result else f"{label}: no fit"
        ax.plot(v, e - e.min(), "o-", ms=3, label=text)
    ax.set_xlabel("volume per atom (A^3)")
    ax.set_ylabel("energy per atom - minimum (eV)")
    ax.legend(fontsize=8)
    ax.set_title(title or "equation of state")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
