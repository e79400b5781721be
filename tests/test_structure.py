"""The shape of lib, checked from the files: imports run one way, modules stay small, one PGD, lean notebooks,
and the spec hash of every model the kept quick runs use is what it was before lib was reorganised."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from lib import LAYERS

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "lib"
MAX_LINES = 500  # "about 450": a module past this is doing more than one job


def _modules():
    return sorted(p for p in LIB.rglob("*.py") if "reference" not in p.parts)


def _package(path: Path) -> str | None:
    rel = path.relative_to(LIB).parts
    return rel[0] if len(rel) > 1 else None


def _lib_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lib"):
            parts = node.module.split(".")
            if len(parts) >= 2:
                found.append((node.lineno, parts[1]))
            else:  # from lib import core
                found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names
                      if a.name.startswith("lib.") and len(a.name.split(".")) > 1]
    return found


def test_every_module_lives_in_a_layer():
    loose = [p.relative_to(REPO) for p in _modules() if _package(p) is None and p.name != "__init__.py"]
    assert not loose, f"modules outside the packages {LAYERS}: {loose}"
    unknown = {_package(p) for p in _modules()} - set(LAYERS) - {None}
    assert not unknown, f"packages not in lib.LAYERS: {unknown}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(LIB)))
def test_imports_only_run_downwards(path):
    package = _package(path)
    if package is None:
        return
    rank = LAYERS.index(package)
    upward = [f"line {line}: lib.{target}" for line, target in _lib_imports(path)
              if target in LAYERS and LAYERS.index(target) > rank]
    assert not upward, (f"{path.relative_to(REPO)} (layer {package!r}) imports from higher layers {upward}; "
                        f"the order is {' ← '.join(LAYERS)}")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(LIB)))
def test_modules_stay_small(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(REPO)} has {n} lines (> {MAX_LINES}): split it by concern"


def test_the_only_l_inf_step_is_in_the_attacks_package():
    # a sign-gradient step written by hand anywhere else is a second PGD
    step = re.compile(r"\.sign\(\)")
    found = [f"{p.relative_to(REPO)}:{i}" for p in _modules() if p.parent.name != "attacks"
             for i, line in enumerate(p.read_text().splitlines(), 1) if step.search(line)]
    assert not found, f"hand-written sign-gradient steps outside lib/attacks (call lib.attacks.pgd.pgd_linf): {found}"


def _notebook_defs(path: Path) -> list[str]:
    names = []
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            try:
                tree = ast.parse("\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))))
            except SyntaxError:
                continue
            names += [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    return names


PLOTTING_PREFIXES = ("plot_", "show_", "draw_")


# notebooks whose protocol code has not moved to lib yet (strict: the entry must go once it has)
PROTOCOL_CODE_LEFT: set[str] = set()


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.xfail(strict=True, reason="protocol code still in "
                                                "the notebook (issue 16, item 5)")) if p.stem in PROTOCOL_CODE_LEFT
                                  else p for p in sorted((REPO / "notebooks").glob("*.ipynb"))], ids=lambda p: p.stem)
def test_notebooks_define_only_plotting_helpers(path):
    protocol = [n for n in _notebook_defs(path) if not n.startswith(PLOTTING_PREFIXES)]
    assert not protocol, (f"{path.name} defines {protocol}: protocol code belongs in lib (lib.eval.protocols); a "
                          f"notebook keeps only one-off plotting helpers named {PLOTTING_PREFIXES}")


def test_spec_hashes_of_the_kept_quick_runs_are_unchanged():
    from quick_specs import quick_run_specs  # tests/ is on sys.path (pytest prepends it)

    kept = json.loads((REPO / "tests" / "data" / "quick_spec_hashes.json").read_text())
    now = quick_run_specs()
    missing = sorted(set(kept) - set(now))
    added = sorted(set(now) - set(kept))
    detail = ""
    if missing and added:  # show how the first changed spec differs
        old, new = kept[missing[0]], now[added[0]]
        diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        detail = f"; e.g. {missing[0]} -> {added[0]} differs in {json.loads(json.dumps(diff, default=str))}"
    assert not missing and not added, (f"spec hashes changed: {len(missing)} cached models would no longer be found "
                                       f"(every user's cache would retrain them){detail}")
