"""The house rules that import-linter cannot say (docs/ARCHITECTURE.md, "The house"): checked on the source, so a
change that puts code in the wrong room fails here with the room named."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "geoplantnet"
JOBS_LINES = 2500  # jobs/ in total: drivers only
JOB_LINES = 300  # one driver
MODULE_LINES = 600  # any module of the package, but those below (each with its reason)
LONG_MODULES = {
    "core/config.py": "the configuration's sections, one class each with its field docs: the users' reference",
    "models/esy.py": "the EUNIS-ESy expert system's parser and evaluator: one grammar (docs/esy.md)",
    "sim/environment.py": "the virtual region's environment layers: one generator",
    "sim/sentinel2.py": "the virtual region's Sentinel-2 renderer: one generator",
}


def _modules(sub: str = "") -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _imports(path: Path) -> set[str]:
    """Every name imported by ``path`` as ``module.name`` (from-imports) or ``module`` (plain imports)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_only_commands_jobs_and_the_run_context_see_the_whole_configuration() -> None:
    # sim/: the simulator stands for the world a run reads; it records the whole (redacted) configuration in its
    # region.json and truth stores, and only runs/inputs.py and evaluation/ may import it
    allowed = ("cli/", "jobs/", "runs/", "testing/", "core/config.py", "sim/")
    leaks = [
        _rel(p)
        for p in _modules()
        if not _rel(p).startswith(allowed) and "geoplantnet.core.config.RunConfig" in _imports(p)
    ]
    assert not leaks, f"RunConfig imported below the run context (take the section or a typed setting): {leaks}"


def test_jobs_are_short_drivers() -> None:
    sizes = {_rel(p): len(p.read_text().splitlines()) for p in _modules("jobs")}
    long = {name: n for name, n in sizes.items() if n > JOB_LINES}
    assert not long, f"jobs modules over {JOB_LINES} lines (move the library below): {long}"
    assert sum(sizes.values()) < JOBS_LINES, f"jobs/ holds {sum(sizes.values())} lines (at most {JOBS_LINES})"


def test_no_module_is_a_house_of_its_own() -> None:
    long = {
        _rel(p): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MODULE_LINES and _rel(p) not in LONG_MODULES
    }
    assert not long, f"modules over {MODULE_LINES} lines (split them, or say why in LONG_MODULES): {long}"


def test_tasks_reach_the_cluster_through_the_tile_streamer_or_the_trainers() -> None:
    """Every loop over tiles goes through runs/tiles.py (bounded, retried, leased); training submits its own tasks
    (one per network)."""
    allowed = ("runs/tiles.py", "training/", "models/peers.py", "testing/")
    submits = []
    for path in _modules():
        if _rel(path).startswith(allowed):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if is_call and node.func.attr in ("submit", "map") and getattr(node.func.value, "id", "") == "client":
                submits.append(f"{_rel(path)}:{node.lineno}")
    assert not submits, f"tasks submitted outside the tile streamer: {submits}"
