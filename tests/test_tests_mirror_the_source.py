"""Tests mirror the source tree (STYLE.md): tests/<package>/test_<module>.py, or a behaviour's name
inside the folder of the package whose behaviour it checks; tests/ itself holds only the tests of
top-level modules (errors.py, cli.py, ...) and of what spans the whole system (deploy/, bench/, layers)."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
SOURCE = TESTS.parent / "veloxserve"
PACKAGES = {p.name for p in SOURCE.iterdir() if (p / "__init__.py").is_file()}


def _modules(package: Path) -> set[str]:
    return {p.stem for p in package.glob("*.py") if p.stem != "__init__"}


def test_every_test_folder_is_a_package_of_the_source() -> None:
    folders = {p.parent for p in TESTS.rglob("test_*.py")} - {TESTS}
    strays = sorted(str(f.relative_to(TESTS)) for f in folders if f.parent != TESTS or f.name not in PACKAGES)
    assert not strays, f"test folders with no veloxserve package of their name: {strays}"


def test_a_test_named_for_a_module_sits_in_that_modules_package() -> None:
    owners: dict[str, set[str]] = {}
    for package in PACKAGES:
        for module in _modules(SOURCE / package):
            owners.setdefault(module, set()).add(package)
    misplaced = []
    for path in TESTS.rglob("test_*.py"):
        subject = path.stem.removeprefix("test_")
        here = None if path.parent == TESTS else path.parent.name
        if path.parent == TESTS and subject in _modules(SOURCE):
            continue  # a top-level module's test (test_errors.py, test_cli.py)
        if subject in owners and here not in owners[subject]:
            misplaced.append(f"{path.relative_to(TESTS)} -> tests/{'|'.join(sorted(owners[subject]))}/")
    assert not misplaced, f"tests named for a module of another package: {sorted(misplaced)}"


def test_every_package_folder_is_importable_as_tests_package() -> None:
    missing = sorted(
        p.name for p in TESTS.iterdir() if p.is_dir() and p.name in PACKAGES and not (p / "__init__.py").is_file()
    )
    assert not missing, f"test folders without __init__.py (their modules' names would collide): {missing}"
