"""The plan of a study (its YAML configuration): which models, variants and training seeds; which
test sets; which MD temperatures, start structures and replicas. Validated with pydantic, every
error naming its key."""

from __future__ import annotations

import copy

from pydantic import Field, ValidationError, field_validator, model_validator

from stableff.errors import ConfigError
from stableff.runtime import usable_device
from stableff.md.settings import DEFAULT_ENGINE, ENGINES, ENSEMBLES
from stableff.models import DEFAULT_MODEL
from stableff.train.config import StrictConfig

#: the remedies a variant can switch on; a variant is "baseline" or remedies joined by "+"
REMEDIES = ("decorrelated", "sam", "zbl", "active")


def variant_remedies(variant: str) -> set[str]:
    """{"decorrelated", "zbl"} for "decorrelated+zbl"; the empty set for "baseline"."""
    if variant == "baseline":
        return set()
    parts = [p.strip() for p in variant.split("+")]
    unknown = [p for p in parts if p not in REMEDIES]
    if unknown or not parts or len(set(parts)) != len(parts):
        raise ValueError(f"unknown variant '{variant}': use baseline, or remedies from {', '.join(REMEDIES)} joined by '+' (e.g. decorrelated+zbl)")
    return set(parts)


class StartStructures(StrictConfig):
    file: str
    frames: list[int] = [0]


def checked_threshold(value) -> str:
    """A committee threshold as written ("0.3" eV/A, or "3x" the validation disagreement), checked."""
    from stableff.errors import StableFFError
    from stableff.md.committee import parse_threshold

    try:
        parse_threshold(value)
    except StableFFError as exc:
        raise ValueError(str(exc)) from None
    return str(value)


class CommitteePlan(StrictConfig):
    """The seeds of each variant as a committee watching every MD run of the variant's models."""

    threshold: str = "3x"  # eV/A (e.g. "0.3"), or a multiple of the committee's disagreement on validation data ("3x")

    @field_validator("threshold", mode="before")
    @classmethod
    def _valid_threshold(cls, value):
        return checked_threshold(value)


SELECTIONS = ("committee", "before_failure")


class OracleConfig(StrictConfig):
    """An ASE calculator that labels frames (active learning): ``package.module:Class`` and its
    keyword arguments."""

    calculator: str  # "package.module:Class"
    kwargs: dict = {}

    @field_validator("calculator")
    @classmethod
    def _importable_name(cls, value):
        if value.count(":") != 1 or not all(value.split(":")):
            raise ValueError(f"'{value}': name the calculator as package.module:Class (e.g. ase.calculators.emt:EMT)")
        return value


class SelectionConfig(StrictConfig):
    method: str = "committee"  # committee: the frames the committee disagrees on most; before_failure: the last frames before each failure
    min_spacing_fs: float = Field(50.0, ge=0)  # between two frames chosen from one run
    # committee: frames above the uncertainty threshold and at most this disagreement (eV/A, or a
    # multiple of the committee's validation disagreement, like the threshold); higher ones are
    # broken structures rather than informative ones (the trust levels of DP-GEN); null: no bound
    max_disagreement: str | None = "10x"

    @field_validator("max_disagreement", mode="before")
    @classmethod
    def _valid_bound(cls, value):
        return None if value is None else checked_threshold(value)

    @field_validator("method")
    @classmethod
    def _known(cls, value):
        if value not in SELECTIONS:
            raise ValueError(f"unknown selection '{value}' (choose from {', '.join(SELECTIONS)})")
        return value


#: the exploration MD of the `active` variant starts its velocities this far from the study's seed,
#: so that the runs judged afterwards are not the runs whose frames were labelled
EXPLORATION_SEED_OFFSET = 1000


class ActivePlan(StrictConfig):
    """The `active` variant of a study: active learning (`stableff learn`) with the variant's seeds
    as the committee, exploring with the study's own stability plan (other velocity seeds) unless
    ``exploration`` changes some of its keys."""

    oracle: OracleConfig
    budget: int = Field(..., ge=1)  # oracle calls in all (per model)
    rounds: int = Field(2, ge=1)
    per_round: int | None = Field(None, ge=1)  # default: the budget spread evenly over the rounds
    selection: SelectionConfig = SelectionConfig()
    committee_threshold: str = "3x"
    exploration: dict = {}  # keys of the stability plan that differ for the exploration MD (e.g. replicas, time_ps)

    @field_validator("committee_threshold", mode="before")
    @classmethod
    def _valid_threshold(cls, value):
        return checked_threshold(value)


class StabilityPlan(StrictConfig):
    temperatures_K: list[float] = [300.0]
    replicas: int = Field(3, ge=1)
    time_ps: float = Field(1.0, gt=0)
    timestep_fs: float = Field(0.5, gt=0)
    ensemble: str = "langevin"
    seed: int = 0  # velocity seed of replica 0 (replica r: seed + r), the same for every model and variant
    in_distribution: list[StartStructures] = []
    out_of_distribution: list[StartStructures] = []
    workers: int | None = Field(None, ge=1)  # processes (default: one per core)
    engine: str = DEFAULT_ENGINE  # batched | ase | lammps
    compile: bool = False  # MD through torch.compile (NequIP 1.28x eager on 2 CPU cores, after a 20-40 s compile: benchmarks/compile_speed.py)
    ranks: int = Field(1, ge=1)  # MPI ranks of each replica (engine: lammps)
    committee: CommitteePlan | None = None  # `committee: true` or {threshold: ...}: the variant's seeds warn of failures

    @field_validator("committee", mode="before")
    @classmethod
    def _committee_switch(cls, value):
        if value is True:
            return {}
        return None if value is False else value

    @field_validator("engine", "ensemble")
    @classmethod
    def _known_choice(cls, value, info):
        choices = {"engine": ENGINES, "ensemble": ENSEMBLES}[info.field_name]
        if value not in choices:
            raise ValueError(f"unknown {info.field_name} '{value}' (choose from {', '.join(choices)})")
        return value

    def md_settings(self, temperature_K: float):
        """The MD settings of every replica at one temperature (replica seeds are added per replica)."""
        from stableff.md.settings import MDSettings, steps_for_time

        return MDSettings(ensemble=self.ensemble, temperature_K=temperature_K, timestep_fs=self.timestep_fs,
                          steps=steps_for_time(self.time_ps, self.timestep_fs), seed=self.seed)


class TestSets(StrictConfig):
    in_distribution: list[str] = []
    out_of_distribution: list[str] = []


class StudyConfig(StrictConfig):
    name: str = "study"
    training: dict  # a full `stableff train` config (data, model, loss, optimizer, scheduler, training, decorrelation)
    models: list[dict] | None = None  # model blocks to compare (default: the training config's model)
    variants: list[str] = ["baseline", "decorrelated"]  # baseline, decorrelated, sam, zbl, decorrelated+zbl, ...
    seeds: list[int] = [0, 1, 2]
    sam: dict = {"rho": 0.005}
    active: ActivePlan | None = None  # the oracle and budget of the `active` variant
    test: TestSets = TestSets()
    stability: StabilityPlan = StabilityPlan()
    # where every stage runs (training, accuracy, correlation, probes, MD): named once for the study
    device: str = "cpu"

    @field_validator("device")
    @classmethod
    def _usable_device(cls, value):
        return usable_device(value)

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, value):
        if not value:
            raise ValueError("list at least one training seed (e.g. [0, 1, 2])")
        if len(set(value)) != len(value):
            raise ValueError(f"a seed is listed twice in {value}")
        return value

    @model_validator(mode="after")
    def _committee_needs_seeds(self):
        if self.stability.committee is not None:
            if len(self.seeds) < 2:
                raise ValueError(f"stability.committee: a committee is the seeds of a variant: list at least two seeds (seeds: {self.seeds})")
            if self.stability.engine == "lammps":
                raise ValueError("stability.committee: the committee is evaluated by the batched and ase engines (LAMMPS sees one model)")
        return self

    @model_validator(mode="after")
    def _active_needs_an_oracle(self):
        if any("active" in variant_remedies(v) for v in self.variants):
            if self.active is None:
                raise ValueError("variants: an active variant needs an `active:` block (oracle: {calculator: package.module:Class}, budget: oracle calls)")
            if len(self.seeds) < 2:
                raise ValueError(f"variants: the active variant's committee is its seeds: list at least two seeds (seeds: {self.seeds})")
            if self.stability.engine == "lammps" and "engine" not in self.active.exploration:
                raise ValueError("active.exploration: the committee watches the batched and ase engines: set active.exploration.engine")
            if (self.training.get("data") or {}).get("train_stress"):
                raise ValueError("training.data.train_stress: the oracle labels energies and forces, not stress: set it to false for the active variant")
        return self

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, value):
        if not value:
            raise ValueError("list at least one variant (e.g. [baseline, decorrelated])")
        remedies = [frozenset(variant_remedies(v)) for v in value]
        if len(set(remedies)) != len(remedies):
            raise ValueError(f"the same variant is listed twice in {value}")
        return value

    def model_blocks(self) -> list[dict]:
        """The model blocks compared: ``models``, or the training config's model."""
        return self.models or [self.training.get("model", {"name": DEFAULT_MODEL})]


def load_study_config(path, overrides: list[str] | None = None) -> StudyConfig:
    from stableff.train.config import format_validation_error, read_validated

    study = read_validated(path, StudyConfig, overrides, what="study configuration")
    for model in study.model_blocks():
        for variant in study.variants:
            variant_config(study, model, variant, study.seeds[0], source=str(path))  # validates every combination now
    if study.active is not None:
        try:
            exploration_plan(study)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"{path}: active.exploration")) from None
        from stableff.study.learn import study_learn_config
        from stableff.study.oracle import oracle_class

        oracle_class(study.active.oracle)  # an oracle that cannot be imported stops here, before any training
        for model in study.model_blocks():
            for variant in study.variants:
                if "active" in variant_remedies(variant):
                    try:
                        study_learn_config(study, model, variant)
                    except ValidationError as exc:
                        raise ConfigError(format_validation_error(exc, f"{path}: active")) from None
    return study


def exploration_plan(study: StudyConfig) -> "StabilityPlan":
    """The exploration MD of the active variant: the study's stability plan with the keys of
    ``active.exploration`` changed, its velocity seeds EXPLORATION_SEED_OFFSET away unless set."""
    raw = {**study.stability.model_dump(), "committee": None, **study.active.exploration}
    if "seed" not in study.active.exploration:
        raw["seed"] = study.stability.seed + EXPLORATION_SEED_OFFSET
    return StabilityPlan.model_validate(raw)


def variant_config(study: StudyConfig, model: dict, variant: str, seed: int, source: str = "<study>"):
    """The training Config of one (model, variant, seed): same data and budget, only the method differs."""
    from stableff.train.config import parse_config

    raw = copy.deepcopy(study.training)
    raw["model"] = copy.deepcopy(model)
    raw.setdefault("training", {})["seed"] = seed
    named = raw["training"].get("device")
    if named is not None and named != study.device and "device" in study.model_fields_set:
        raise ConfigError(f"{source}: training.device is '{named}' but the study's device is '{study.device}': name the device once, as device:")
    raw["training"]["device"] = study.device if (named is None or "device" in study.model_fields_set) else named
    remedies = variant_remedies(variant)
    raw.setdefault("decorrelation", {})["enabled"] = "decorrelated" in remedies
    if "sam" in remedies:
        raw["optimizer"] = {**raw.get("optimizer", {}), "name": "sam", **study.sam}
    if "zbl" in remedies:
        raw["model"]["zbl"] = True
    return parse_config(raw, f"{source} (model {model.get('name')}, variant {variant}, seed {seed})")


def start_structures(plan: StabilityPlan) -> list[tuple[str, str, object]]:
    """(kind "ID"/"OOD", label, ase.Atoms) of every start structure of the plan."""
    from stableff.data.io import read_frames
    from stableff.md.replicas import check_distinct_starts, start_label

    check_distinct_starts([(entry.file, frame) for entries in (plan.in_distribution, plan.out_of_distribution)
                           for entry in entries for frame in entry.frames], "stability start structure")
    starts = []
    for kind, entries in (("ID", plan.in_distribution), ("OOD", plan.out_of_distribution)):
        for entry in entries:
            for frame in entry.frames:
                atoms = read_frames(entry.file, index=frame)[0].to_atoms()
                starts.append((kind, start_label(entry.file, frame, prefix=f"{kind}_"), atoms))
    return starts


