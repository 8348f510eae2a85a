"""The layering of the README's architecture section, checked on the source: every import inside
stableff/ (module level or inside functions) goes to the same package or to a layer below."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "stableff"

# layer of each top-level module or package of stableff (data flows from low to high numbers)
LAYERS = {
    "errors": 0, "runtime": 0, "io": 0.5, "fingerprint": 0.5, "layout": 0.5,
    "data": 1, "datasets": 1, "configs": 1,
    "models": 2,
    "measures": 3, "testing": 3,
    "train": 4, "md": 4,
    "analysis": 5,
    "study": 6,
    "report": 7,
    "cli": 8, "__main__": 9, "__init__": 9,
}


def imports_of(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


def unit_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def layer_violations(path: Path, unit: str) -> list[str]:
    """The imports of ``path`` (a module of the top-level unit ``unit``) that break the layering: a
    module of a higher layer, or a sibling of the same layer."""
    violations = []
    for line, module in imports_of(path):
        parts = module.split(".")
        if parts[0] != "stableff" or len(parts) == 1:
            continue
        target = parts[1]
        if target == unit:
            continue
        assert target in LAYERS, f"{path}:{line} imports unknown stableff.{target}"
        if LAYERS[target] >= LAYERS[unit]:
            violations.append(f"{path}:{line}: {unit} (layer {LAYERS[unit]}) imports stableff.{target} (layer {LAYERS[target]})")
    return violations


def test_no_module_imports_a_layer_above_it():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = unit_of(path)
        assert unit in LAYERS, f"{path}: add this module to the layer table (and to the README)"
        violations += layer_violations(path, unit)
    assert not violations, "\n".join(violations)


def test_md_analysis_and_report_never_reach_training_code():
    for unit in ("md", "analysis", "report", "measures", "models"):
        for path in (PACKAGE / unit).rglob("*.py"):
            assert not any(m.startswith("stableff.train") for _, m in imports_of(path)), path


def test_the_checker_sees_a_violation(tmp_path):
    """The layer rule itself, on deliberately wrong imports (inside a function too): md reaching
    train (same layer), models reaching md (above), data reaching the study; a correct one passes."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from stableff.train.loop import Trainer\n")
    assert len(layer_violations(bad, "md")) == 1
    bad.write_text("import stableff.md.settings\n")
    assert layer_violations(bad, "models") and layer_violations(bad, "md") == []
    bad.write_text("from stableff.study.conditions import Condition\n")
    assert layer_violations(bad, "data")
    bad.write_text("from stableff.data import keys\nfrom stableff.layout import StudyRun\n")
    assert layer_violations(bad, "study") == []


def test_no_file_cites_a_document_outside_the_repository():
    root = PACKAGE.parent
    for path in list(PACKAGE.rglob("*.py")) + list(PACKAGE.rglob("*.yaml")):
        text = path.read_text()
        assert "DESIGN.md" not in text and "CONVENTIONS.md" not in text, path
        if "docs/method.md" in text:
            assert (root / "docs" / "method.md").is_file()


#: md/'s vocabulary: what every engine imports; none of it may reach an engine, the replica
#: planner or the process supervision (a vocabulary module that ran an engine could not be shared)
MD_VOCABULARY = ("settings", "records", "state_file", "monitors", "integrators")
MD_RUNNERS = ("stableff.md.engines", "stableff.md.replicas", "stableff.md.supervision", "stableff.md.calculator")


def test_md_vocabulary_runs_no_engine():
    for name in MD_VOCABULARY:
        path = PACKAGE / "md" / f"{name}.py"
        assert path.is_file(), path
        reached = [m for _, m in imports_of(path) if m.startswith(MD_RUNNERS)]
        assert not reached, f"{path} imports {reached}"


def test_engines_share_the_vocabulary_not_each_other():
    engines = sorted((PACKAGE / "md" / "engines").glob("*.py"))
    assert {p.stem for p in engines} >= {"ase", "batched", "replica_batch"}
    for path in engines:
        for _, module in imports_of(path):
            if module.startswith("stableff.md.engines.") and path.stem != "batched":
                raise AssertionError(f"{path} imports {module}: engines are independent of each other")
            assert not module.startswith(("stableff.md.replicas", "stableff.md.supervision")), f"{path} reaches back to {module}"


def test_networks_know_nothing_of_their_composition():
    """The energy networks are composed by models/force_field.py; none of them imports it, the
    compile handling or the checkpoint loading."""
    for name in ("nequip", "allegro", "gemnet", "dimenet_like", "base"):
        path = PACKAGE / "models" / f"{name}.py"
        reached = [m for _, m in imports_of(path) if m in ("stableff.models.force_field", "stableff.models.compiled", "stableff.models.saved")]
        assert not reached, f"{path} imports {reached}"


def test_no_file_over_350_lines_unexplained():
    """Files of stableff/ stay short enough to read whole; the exceptions say why in LONG_FILES."""
    long = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    over = {k: n for k, n in long.items() if n > 350 and k not in LONG_FILES}
    assert not over, over


#: files allowed over 350 lines, and why
LONG_FILES = {
    "cli.py": "the argument parsers of nine commands and their printing; each command calls one layer",
    "train/loop.py": "the trainer: setup, one epoch, validation, checkpoints and resumption belong to one object's state",
}
