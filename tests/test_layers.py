"""The package's layers, held by an import walk over its source (no import runs):

- the stages never import each other (a reader diffs them side by side);
- ``final.stores.base``, the contract, names no store;
- the stores never import the queue (huey's storage never imports its api), nor each other,
  only the contract, the values below it, and their own modules;
- only ``final.stores`` (``open_store``) and the admin modules name a store;
- no module is over 500 lines, but for the public facade ``final/_queue.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import jobqueue

pytestmark = pytest.mark.timeout(60)

ROOT = Path(jobqueue.__file__).parent
#: What any store may import from jobqueue: the contract and the values it is made of.
STORE_MAY_IMPORT = ("jobqueue._priority", "jobqueue.errors", "jobqueue.final._model",
                    "jobqueue.final._states", "jobqueue.final._masking", "jobqueue.final._checks",
                    "jobqueue.final._picker", "jobqueue.final.stores.base")
#: Modules outside the stores that may name a store (they open one, or repair it).
OPENS_STORES = ("jobqueue.final.stores", "jobqueue.final.admin", "jobqueue.final.pg_admin",
                "jobqueue.final")  # (which exports MemoryStore)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every jobqueue module ``path`` imports, at its top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "jobqueue"}


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _real(names: set[str]) -> set[str]:
    """Imported names that are modules (``from a import b`` names a.b only if b is one)."""
    return {name for name in names if name in MODULES}


@pytest.mark.parametrize("stage", ["naive", "improved", "final"])
def test_the_stages_never_import_each_other(stage: str) -> None:
    others = {f"jobqueue.{s}" for s in ("naive", "improved", "final")} - {f"jobqueue.{stage}"}
    for name, path in MODULES.items():
        if _within(name, f"jobqueue.{stage}"):
            wrong = {i for i in imports(path) if any(_within(i, o) for o in others)}
            assert not wrong, f"{name} imports {wrong}"


def test_the_contract_names_no_store() -> None:
    found = _real(imports(MODULES["jobqueue.final.stores.base"]))
    assert found <= set(STORE_MAY_IMPORT), found - set(STORE_MAY_IMPORT)


@pytest.mark.parametrize("store", ["memory", "lmdb", "postgres"])
def test_a_store_imports_the_contract_and_itself_only(store: str) -> None:
    own = f"jobqueue.final.stores.{store}"
    checked = 0
    for name, path in MODULES.items():
        if not _within(name, own):
            continue
        checked += 1
        wrong = {i for i in _real(imports(path))
                 if not _within(i, own) and i not in STORE_MAY_IMPORT}
        assert not wrong, f"{name} imports {wrong}"
    assert checked


def test_only_the_factory_and_the_admin_name_a_store() -> None:
    stores = ("jobqueue.final.stores.memory", "jobqueue.final.stores.lmdb",
              "jobqueue.final.stores.postgres")
    for name, path in MODULES.items():
        if any(_within(name, s) for s in stores) or name in OPENS_STORES:
            continue
        wrong = {i for i in _real(imports(path)) if any(_within(i, s) for s in stores)}
        assert not wrong, f"{name} imports {wrong}: only open_store() names a store"


def test_the_cli_imports_no_private_module() -> None:
    """The command line is built on the public API (final.admin) alone."""
    checked = [name for name in MODULES
               if _within(name, "jobqueue.cli") or name == "jobqueue.worker"]
    for name in checked:
        private = {i for i in _real(imports(MODULES[name]))
                   if any(part.startswith("_") for part in i.split("."))}
        assert not private, f"{name} imports {private}"
    assert len(checked) == 3


def test_a_walk_that_finds_nothing_would_fail() -> None:
    """The walk itself: it sees a deferred import inside a function, and a relative one."""
    found = imports(MODULES["jobqueue.final.stores"])
    assert "jobqueue.final.stores.postgres" in found  # (imported inside open_store)
    assert "jobqueue.final.stores.base" in found


def test_no_module_is_over_500_lines() -> None:
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 500
            and name != "jobqueue.final._queue"}
    assert not long, f"split these: {long}"
