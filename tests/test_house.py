"""The shape of the package, as the README's Development section describes it: the model's
modules know nothing of the engine, and every module imports on its own."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import knn_cli

PACKAGE = Path(knn_cli.__file__).parent
MODEL_MODULES = ("network", "stack", "layers", "optim")


def imported_modules(path: Path) -> set[str]:
    """The package's modules an import statement of the file names, wherever it stands (inside
    a function or under `if TYPE_CHECKING:` too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "knn_cli":
            found |= {f"knn_cli.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] == "knn_cli"}


def test_the_model_imports_nothing_from_the_engine() -> None:
    """Not even lazily or for type hints; and only from the model itself (so nothing of the
    engine comes in through another module either)."""
    model = {f"knn_cli.{name}" for name in MODEL_MODULES}
    for name in MODEL_MODULES:
        assert imported_modules(PACKAGE / f"{name}.py") <= model, name


def test_every_module_imports_on_its_own_and_the_model_without_the_engine() -> None:
    """In a fresh interpreter, each module alone (the package's modules forgotten in between),
    so that no import works only because another module was imported first."""
    modules = sorted(
        info.name
        for info in pkgutil.walk_packages([str(PACKAGE)], prefix="knn_cli.")
        if info.name != "knn_cli.__main__"
    )
    script = f"""
import importlib, sys
for name in {modules!r}:
    for loaded in [m for m in sys.modules if m == "knn_cli" or m.startswith("knn_cli.")]:
        del sys.modules[loaded]
    importlib.import_module(name)
    if name in {[f"knn_cli.{m}" for m in MODEL_MODULES]!r}:
        engine = [m for m in sys.modules if m.startswith("knn_cli.engine")]
        assert not engine, (name, engine)
print(len({modules!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # Every module file of the package was walked and imported (not a prefix of them).
    files = {
        ".".join(("knn_cli", *path.relative_to(PACKAGE).with_suffix("").parts))
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }
    assert files <= set(modules)
    assert int(result.stdout) == len(modules)


def test_knn_runs_reads_folders_without_the_heavy_modules(tmp_path: Path) -> None:
    """Telling folders' kinds apart and summarising a study, a gradient check and a range test
    take neither NumPy nor the config, training, sweep or study machinery: `knn runs` starts at
    once (a run's row reads its config, a sweep's its plan, as they must)."""
    (tmp_path / "check").mkdir()
    (tmp_path / "check" / "summary.json").write_text('{"command": "gradcheck", "status": "passed"}')
    (tmp_path / "range").mkdir()
    (tmp_path / "range" / "lr_range.json").write_text("{}")
    (tmp_path / "study").mkdir()
    parts = '{"gradcheck": {"folder": "gradcheck", "kind": "gradcheck", "status": "pending"}}'
    (tmp_path / "study" / "study.json").write_text(
        f'{{"kind": "study", "version": 1, "parts": {parts}}}'
    )
    script = f"""
import sys
from pathlib import Path
from knn_cli.listing import list_rows, rows_json
rows, others = list_rows(Path({str(tmp_path)!r}))
assert sorted(row.kind for row in rows) == ["gradcheck", "lr-range", "study"], rows_json(rows)
heavy = ("numpy", "yaml", "matplotlib", "knn_cli.config", "knn_cli.runs", "knn_cli.engine",
         "knn_cli.trainer", "knn_cli.sweeps", "knn_cli.study", "knn_cli.lr_range")
print([m for m in sys.modules if m.startswith(heavy)])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_runs_row_in_knn_runs_draws_nothing(tmp_path: Path) -> None:
    """A run's row reads its config.yaml as written to say its settings in words (from
    `config_diff`): neither the config machinery nor NumPy nor the plotting module."""
    run = tmp_path / "2026-01-01_00-00-00_r"
    run.mkdir()
    (run / "config.yaml").write_text("name: r\nmodel: {hidden: [20]}\n")
    (run / "summary.json").write_text('{"status": "finished", "test_accuracy": 0.5}')
    script = f"""
import sys
from pathlib import Path
from knn_cli.listing import list_rows
rows, others = list_rows(Path({str(tmp_path)!r}))
assert [row.kind for row in rows] == ["run"] and "hidden [20]" in rows[0].settings, rows
heavy = ("matplotlib", "knn_cli.plots", "numpy", "knn_cli.config.")
print([m for m in sys.modules if m.startswith(heavy) or m == "knn_cli.config"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
