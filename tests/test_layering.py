"""Dependencies point one way (ops ← models ← methods ← train ← entry points; data and eval know no method and
no trainer): checked on the source text, so that a new import across a boundary fails here."""
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastmim"


def imports(folder: str) -> list[tuple[str, str]]:
    """(file, imported module) of every import in fastmim/<folder>, relative ones made absolute."""
    found = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        package = ".".join(("fastmim", *path.relative_to(PACKAGE).parent.parts))
        for line in path.read_text().splitlines():
            match = re.match(r"\s*(?:from\s+(\.*)([\w.]*)\s+import|import\s+([\w.]+))", line)
            if not match:
                continue
            dots, name, plain = match.groups()
            if plain:
                found.append((path.name, plain))
            elif dots:
                base = package.split(".")[: len(package.split(".")) - (len(dots) - 1)]
                found.append((path.name, ".".join([*base, name] if name else base)))
            else:
                found.append((path.name, name))
    return found


@pytest.mark.parametrize("folder", ["eval", "models", "methods", "ops", "data"])
def test_nothing_below_the_trainer_imports_it(folder):
    assert [(f, m) for f, m in imports(folder) if m.startswith("fastmim.train")] == []


def test_models_import_no_method():
    assert [(f, m) for f, m in imports("models") if m.startswith("fastmim.methods")] == []


@pytest.mark.parametrize("folder", ["eval", "data"])
def test_data_and_eval_know_no_method(folder):
    assert [(f, m) for f, m in imports(folder) if m.startswith("fastmim.methods")] == []


def test_the_scan_sees_relative_imports():
    assert ("teacher.py", "fastmim.models.teacher_last_block") in imports("models")
