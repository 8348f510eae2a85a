"""The training loop: one process or data-parallel over several (torchrun; gloo on CPU, nccl on GPU).

All randomness is derived from (seed, epoch), so a run resumed from ``last.ckpt`` continues exactly
as the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from stableff.data import keys
from stableff.data.graph import collate, edges_first, frame_to_graph, to_device
from stableff.data.stats import compute_statistics
from stableff.errors import StableFFError
from stableff.models import build_model
from stableff.io import save_torch_atomic, write_text_atomic
from stableff.layout import TrainingRun
from stableff.measures.accuracy import error_metrics, predict
from stableff.measures.correlation import dataset_correlation
from stableff.models.saved import FORMAT, checkpoint_hyperparameters, load_checkpoint, load_weights
from stableff.train.config import Config, config_to_dict
from stableff.data.splits import data_hashes, load_splits, read_many
from stableff.train.ema import ExponentialMovingAverage
from stableff.train.decorrelation import coefficient, correlation_loss, sample_edges
from stableff.train.losses import combine_terms, loss_sums, loss_weights, weighted_loss
from stableff.train.sam import SAM
from stableff.runtime import usable_device


def distributed_context() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; initialises the process group if needed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("STABLEFF_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
    return rank, world


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled global batches of item indices; the order depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_items, generator=generator).tolist()
    return [order[k : k + batch_size] for k in range(0, num_items, batch_size)]


def build_from_statistics(config: Config, statistics) -> torch.nn.Module:
    """The configured model with scale = force RMS, shift = E0 + mean residual, neighbour normalisation."""
    torch.manual_seed(config.training.seed)
    shift = np.asarray(statistics.reference_energies) + statistics.energy_per_atom_residual_mean
    return build_model(
        config.model.name,
        type_numbers=statistics.type_numbers,
        avg_num_neighbors=statistics.mean_num_neighbors,
        energy_scale=statistics.force_rms,
        energy_shift=torch.as_tensor(shift),
        **placed_hyperparameters(config, statistics)[0],
    )


def placed_hyperparameters(config: Config, statistics) -> tuple[dict, list[str]]:
    """The model's hyper-parameters with what the training data decides filled in: the ZBL switch
    radii of ``zbl: {switch: data}`` from the closest distance of each species pair (stored in the
    checkpoint as ``zbl_pairs``). Also returns the pairs absent from the data (covalent radii)."""
    from stableff.models.priors import PRIOR_HYPERPARAMETERS, data_placed_pairs

    hyper = config.model.hyperparameters()
    if not (hyper.get("zbl") and hyper.get("zbl_switch") == "data" and hyper.get("zbl_pairs") is None):
        return hyper, []
    r_max = config.model.cutoff_A()
    pairs, absent = data_placed_pairs(statistics.type_numbers, r_max, statistics.min_pair_distance,
                                      hyper.get("zbl_factor", PRIOR_HYPERPARAMETERS["zbl_factor"]), hyper.get("zbl_width", PRIOR_HYPERPARAMETERS["zbl_width"]))
    return {**hyper, "zbl_pairs": pairs}, absent


def gradient_step(model, local_graphs, config: Config, world: int, device, dtype, lambda_corr: float = 0.0, generator: torch.Generator | None = None):
    """Forward + backward of one global batch (this process's share); gradients are summed over
    processes, and the physical loss uses global counts, so it equals single-process training.

    With decorrelation enabled, adds lambda_corr * L_corr (L_corr on this process's edges, averaged
    over processes). Returns (total loss, per-term values, per-layer corr_l or None).
    """
    weights = loss_weights(config.loss)
    use_stress = config.loss.stress_weight > 0
    decorrelation = config.decorrelation
    l_corr, measures = None, None
    if local_graphs:
        batch = to_device(collate(local_graphs), device, dtype)
        if decorrelation.enabled:
            sample = sample_edges(batch[keys.EDGE_INDEX].shape[1], decorrelation.max_edges, generator, device)
            if sample is not None:
                batch = edges_first(batch, sample)
        prediction = model(batch, compute_forces=True, compute_stress=use_stress and bool(batch[keys.PBC].all()), create_graph=True, edge_features=decorrelation.enabled)
        sums = loss_sums(prediction, batch, use_stress)
        if decorrelation.enabled:
            l_corr, measures = correlation_loss(
                prediction[keys.EDGE_FEATURES], decorrelation.layers, decorrelation.layer_weights,
                model.edge_feature_scalar_counts, decorrelation.channels,
            )
    else:
        prediction, sums = None, {}
    names = ["energy", "forces"] + (["stress"] if use_stress else [])
    counts = torch.tensor([float(sums[n][1]) if n in sums else 0.0 for n in names], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(counts)
    global_counts = dict(zip(names, counts.tolist()))
    loss, terms = weighted_loss(sums, global_counts, weights) if sums else (None, {})
    if l_corr is not None and lambda_corr > 0:
        loss = loss + (lambda_corr / world) * l_corr
    model.zero_grad(set_to_none=False)
    if loss is not None:
        loss.backward()
    if world > 1:
        for parameter in model.parameters():
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad)
    values = [float(terms[n].detach()) if n in terms else 0.0 for n in names]
    if decorrelation.enabled:
        values.append(float(l_corr.detach()) / world if l_corr is not None else 0.0)
        values.extend((m / world if m == m else 0.0) for m in (measures or []))
    values = torch.tensor(values, dtype=torch.float64)
    if world > 1:
        dist.all_reduce(values)
    term_values = dict(zip(names, values[: len(names)].tolist()))
    total = sum(weights[n] * v for n, v in term_values.items())
    layer_corr = None
    if decorrelation.enabled:
        term_values["corr"] = float(values[len(names)])
        total += lambda_corr * term_values["corr"]
        layer_corr = values[len(names) + 1 :].tolist()
    return total, term_values, layer_corr


class Trainer:
    """Fits a model as configured, writing into ``out_dir``: config.yaml, metrics.csv, last.ckpt,
    best.ckpt (atomically, every epoch / on validation improvement)."""

    def __init__(self, config: Config, out_dir: str | Path, resume: bool = False, progress: bool = True):
        self.config = config
        self.out_dir = Path(out_dir)
        self.rank, self.world = distributed_context()
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        training = config.training
        if training.num_threads:
            torch.set_num_threads(training.num_threads)
        try:
            self.device = torch.device(usable_device(training.device))
        except ValueError as error:
            raise StableFFError(f"training.device: {error}") from None
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.dtype = getattr(torch, training.dtype)
        self.files = TrainingRun(self.out_dir)
        last = self.files.last_checkpoint
        if resume and not last.is_file():
            raise StableFFError(f"{self.out_dir}: nothing to resume (no last.ckpt)")
        if not resume and last.is_file():
            raise StableFFError(f"{self.out_dir} already holds a training run; pass --resume to continue it or choose another --out")
        self.resume_from = load_checkpoint(last) if resume else None

    # ------------------------------------------------------------------ setup
    def _log(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def _prepare(self) -> None:
        config = self.config
        t0 = time.perf_counter()
        self.data_hashes = data_hashes(config.data)
        if self.resume_from is not None:
            self._check_resume()
        splits = load_splits(config.data)
        isolated = read_many(config.data.isolated_atoms, require=("energy",)) if config.data.isolated_atoms else None
        if self.resume_from is not None:
            from stableff.data.stats import DatasetStatistics

            self.statistics = DatasetStatistics.from_dict(self.resume_from["statistics"])
        else:
            r_max = config.model.cutoff_A()
            self.statistics = compute_statistics(splits["train"], r_max, isolated_atoms=isolated)
        self.model = build_from_statistics(config, self.statistics).to(device=self.device, dtype=self.dtype)
        cutoff = self.model.r_max
        types = self.statistics.type_numbers
        self.graphs = {name: [frame_to_graph(f, types, cutoff, self.dtype) for f in frames] for name, frames in splits.items()}
        self._log(
            f"data: {len(self.graphs['train'])} train / {len(self.graphs['validation'])} validation / "
            f"{len(self.graphs['test'])} test frames; {self.statistics.mean_num_neighbors:.1f} neighbours per atom "
            f"within {cutoff:.2f} A; force RMS {self.statistics.force_rms:.3f} eV/A ({time.perf_counter() - t0:.1f} s)"
        )
        self._log(f"model: {config.model.name}, {sum(p.numel() for p in self.model.parameters()):,} parameters, {config.training.dtype}, {self.device}")
        placed, absent = placed_hyperparameters(config, self.statistics)
        if "zbl_pairs" in placed and placed.get("zbl_switch") == "data":
            from stableff.data.species import pair_label

            def label(key):
                return pair_label(*map(int, key.split("-")))

            radii = ", ".join(f"{label(k)} {inner:.2f}-{outer:.2f} A" for k, (inner, outer) in placed["zbl_pairs"].items() if k not in absent)
            self._log(f"zbl: switch placed by the training data's closest pairs (factor {placed.get('zbl_factor', 1.0):g}): {radii}"
                      + (f"; absent from the data, covalent radii: {', '.join(label(k) for k in absent)}" if absent else ""))
        opt = config.optimizer
        base = torch.optim.AdamW if (opt.base if opt.name == "sam" else opt.name) == "adamw" else torch.optim.Adam
        if opt.name == "sam":
            self.optimizer = SAM(self.model.parameters(), base, rho=opt.rho, adaptive=opt.adaptive, lr=opt.lr, weight_decay=opt.weight_decay)
        else:
            self.optimizer = base(self.model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
        scheduler = config.scheduler
        if scheduler.name == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, factor=scheduler.factor, patience=scheduler.patience, min_lr=scheduler.min_lr)
        elif scheduler.name == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.training.epochs, eta_min=scheduler.min_lr)
        else:
            self.scheduler = None
        self.ema = ExponentialMovingAverage(self.model, config.training.ema_decay) if config.training.ema_decay else None
        # a fresh build, not a deepcopy: copying e3nn's compiled tensor products adds constant buffers
        self.eval_model = build_from_statistics(self.config, self.statistics).to(device=self.device, dtype=self.dtype)
        self.start_epoch, self.step, self.best_val, self.bad_epochs, self.history = 0, 0, math.inf, 0, []
        self.train_seconds = 0.0
        self.step_seconds: list[float] = []
        if self.resume_from is not None:
            from stableff.fingerprint import differences

            changed = differences(checkpoint_hyperparameters(self.resume_from), self.model.hyperparameters, prefix="model ")
            if changed:
                raise StableFFError(f"{self.files.last_checkpoint}: cannot resume: the model differs ({'; '.join(changed[:4])}); train into a new --out instead")
            state = self.resume_from["train_state"]
            load_weights(self.model, state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None and state["ema"] is not None:
                self.ema.load_state_dict(state["ema"])
            self.start_epoch = state["epoch"] + 1
            self.step, self.best_val, self.bad_epochs = state["step"], state["best_val"], state["bad_epochs"]
            self.history = state["history"]
            self.train_seconds = state.get("train_seconds", 0.0)
            self.step_seconds = list(state.get("step_seconds", []))
            self._log(f"resuming from {self.files.last_checkpoint} after epoch {state['epoch'] + 1}")
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(yaml.safe_dump(config_to_dict(self.config), sort_keys=False), self.files.config)

    def median_step_seconds(self) -> float | None:
        """Median wall time of one optimiser step (forward, backward, update), the first 3 steps
        (warm-up) left out: robust to a CPU shared with other work, unlike the total time."""
        steps = self.step_seconds[3:] if len(self.step_seconds) > 5 else self.step_seconds
        return float(np.median(steps)) if steps else None

    def _check_resume(self) -> None:
        """--resume continues the same run: refuse changed data (settings or file contents) or model."""
        from stableff.fingerprint import differences

        stored = self.resume_from
        current = config_to_dict(self.config)
        changed = differences({"data": stored["config"]["data"], "model": stored["config"]["model"]}, {"data": current["data"], "model": current["model"]})
        changed += differences(stored.get("data_hashes"), self.data_hashes, prefix="data file ")
        if changed:
            raise StableFFError(
                f"{self.files.last_checkpoint}: cannot resume with other data or model settings ({'; '.join(changed[:4])}); "
                "train into a new --out instead"
            )

    # ------------------------------------------------------------------ epochs
    def inference_state(self) -> dict:
        return self.ema.averaged_state_dict(self.model) if self.ema is not None else copy.deepcopy(self.model.state_dict())

    def lambda_at(self, step: int, steps_per_epoch: int) -> float:
        """The decorrelation coefficient at a step (t = step / total steps)."""
        decorrelation = self.config.decorrelation
        if not decorrelation.enabled:
            return 0.0
        t = step / max(self.config.training.epochs * steps_per_epoch, 1)
        return coefficient(decorrelation.schedule, t, decorrelation.lambda_max, decorrelation.lambda_min, decorrelation.warmup)

    def _train_epoch(self, epoch: int) -> dict:
        self.model.train()
        graphs = self.graphs["train"]
        training = self.config.training
        batches = epoch_batches(len(graphs), training.batch_size, training.seed, epoch)
        iterator = batches
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{training.epochs}", unit="batch", leave=False, file=sys.stderr, mininterval=0.5)
            iterator = bar
        totals, layer_totals, n = {}, None, 0
        sam = isinstance(self.optimizer, SAM)
        for global_batch in iterator:
            step_start = time.perf_counter()
            local = [graphs[i] for i in global_batch[self.rank :: self.world]]
            lambda_corr = self.lambda_at(self.step, len(batches))
            # the edge subsample depends only on (seed, step, rank): resumable and reproducible;
            # SAM's second pass draws the same subsample from a fresh generator with the same seed
            sample_seed = training.seed * 1_000_003 + 500_009 * self.step + self.rank + 1
            step_args = (self.model, local, self.config, self.world, self.device, self.dtype, lambda_corr)
            loss, terms, layer_corr = gradient_step(*step_args, torch.Generator().manual_seed(sample_seed))
            if sam:
                self.optimizer.first_step()
                gradient_step(*step_args, torch.Generator().manual_seed(sample_seed))
            if training.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), training.grad_clip)
            if sam:
                self.optimizer.second_step()
            else:
                self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.step_seconds.append(time.perf_counter() - step_start)
            self.step += 1
            n += 1
            totals["loss"] = totals.get("loss", 0.0) + loss
            totals["lambda"] = totals.get("lambda", 0.0) + lambda_corr
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value
            if layer_corr is not None:
                layer_totals = layer_corr if layer_totals is None else [a + b for a, b in zip(layer_totals, layer_corr)]
            if bar is not None:
                text = f"loss {loss:.4g}  F-RMSE {1000 * math.sqrt(terms.get('forces', 0.0)):.0f} meV/A"
                if "corr" in terms:
                    text += f"  lambda {lambda_corr:.3g}  L_corr {terms['corr']:.3g}"
                bar.set_postfix_str(text, refresh=False)
        means = {k: v / max(n, 1) for k, v in totals.items()}
        means["layer_corr"] = [v / max(n, 1) for v in layer_totals] if layer_totals is not None else None
        return means

    def _validate(self) -> dict:
        load_weights(self.eval_model, self.inference_state())
        prediction = predict(self.eval_model, self.graphs["validation"], batch_size=max(self.config.training.batch_size, 8), device=self.device)
        metrics = error_metrics(prediction)
        # the training loss's weighted terms, on the validation frames (stress where it is trained)
        terms = {"energy": (metrics["ermse_meV_per_atom"] / 1000) ** 2, "forces": (metrics["frmse_meV_per_A"] / 1000) ** 2}
        if self.config.loss.stress_weight > 0 and "srmse_meV_per_A3" in metrics:
            terms["stress"] = (metrics["srmse_meV_per_A3"] / 1000) ** 2
        metrics["loss"] = combine_terms(terms, loss_weights(self.config.loss))
        correlation = dataset_correlation(
            self.eval_model, self.graphs["validation"], batch_size=max(self.config.training.batch_size, 8), device=self.device,
            channels=self.config.decorrelation.channels,
        )
        metrics["layer_corr"] = correlation["corr_mean"]
        return metrics

    def _checkpoint(self, epoch: int) -> dict:
        return {
            "format": FORMAT,
            "model_name": self.config.model.name,
            "hyperparameters": self.model.hyperparameters,
            "type_numbers": self.model.type_numbers,
            "dtype": self.config.training.dtype,
            "statistics": self.statistics.to_dict(),
            "config": config_to_dict(self.config),
            "data_hashes": self.data_hashes,
            "model_state": self.inference_state(),
            "epoch": epoch,
            "metrics": self.history[-1] if self.history else {},
            "train_state": {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "epoch": epoch,
                "step": self.step,
                "best_val": self.best_val,
                "bad_epochs": self.bad_epochs,
                "history": self.history,
                "train_seconds": self.train_seconds,
                "step_seconds": self.step_seconds,
            },
        }

    def _write_metrics(self) -> None:
        columns: list[str] = []
        for row in self.history:
            columns.extend(k for k in row if k not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.history)
        write_text_atomic(buffer.getvalue(), self.files.metrics)

    def run(self) -> dict:
        """Train to the configured number of epochs (or early stop); return the last metrics row."""
        self._prepare()
        training = self.config.training
        for epoch in range(self.start_epoch, training.epochs):
            t0 = time.perf_counter()
            train_terms = self._train_epoch(epoch)
            validation = self._validate()
            self.train_seconds += time.perf_counter() - t0
            lr = self.optimizer.param_groups[0]["lr"]
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(validation["loss"])
            elif self.scheduler is not None:
                self.scheduler.step()
            improved = validation["loss"] < self.best_val
            if improved:
                self.best_val, self.bad_epochs = validation["loss"], 0
            else:
                self.bad_epochs += 1
            row = {
                "epoch": epoch + 1,
                "step": self.step,
                "time_s": round(self.train_seconds, 3),
                "lr": lr,
                "train_loss": train_terms.get("loss", float("nan")),
                "train_energy_mse_eV2_per_atom2": train_terms.get("energy", float("nan")),
                "train_forces_mse_eV2_per_A2": train_terms.get("forces", float("nan")),
                "val_loss": validation["loss"],
                "val_emae_meV_per_atom": validation["emae_meV_per_atom"],
                "val_fmae_meV_per_A": validation["fmae_meV_per_A"],
                "lambda": train_terms.get("lambda", 0.0),
            }
            if train_terms.get("layer_corr") is not None:
                row["train_L_corr"] = train_terms["corr"]
                row.update({f"train_corr_l{k}": v for k, v in enumerate(train_terms["layer_corr"])})
            row.update({f"val_corr_l{k}": v for k, v in enumerate(validation["layer_corr"])})
            row["val_corr_mean"] = float(np.nanmean(validation["layer_corr"]))
            self.history.append(row)
            if self.is_main:
                checkpoint = self._checkpoint(epoch)
                if improved:
                    save_torch_atomic(checkpoint, self.files.best_checkpoint)
                save_torch_atomic(checkpoint, self.files.last_checkpoint)
                self._write_metrics()
                self._log(
                    f"epoch {epoch + 1:4d}/{training.epochs}  loss {row['train_loss']:.4g}  "
                    f"val EMAE {row['val_emae_meV_per_atom']:7.2f} meV/atom  FMAE {row['val_fmae_meV_per_A']:7.1f} meV/A  "
                    f"corr {row['val_corr_mean']:.3f}  lambda {row['lambda']:.3g}  "
                    f"lr {lr:.2e}  {time.perf_counter() - t0:5.1f} s{'  *best' if improved else ''}"
                )
            if training.early_stopping_patience and self.bad_epochs >= training.early_stopping_patience:
                self._log(f"early stopping: no validation improvement for {self.bad_epochs} epochs")
                break
        if self.world > 1:
            dist.barrier()
        return self.history[-1] if self.history else {}
