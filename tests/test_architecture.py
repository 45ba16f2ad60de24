"""The package's layout is a rule, not a habit: the import contract and private names.

The layers and what may import what are in the repository's `.importlinter`
(docs/architecture.md explains them); import-linter checks every import,
direct or through other modules, including those inside functions. The
second rule, that no module uses another module's private names, is checked
here on the syntax tree: a leading underscore means "only this module".
"""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_import_contract_holds():
    # import-linter's own command, from the environment running the tests.
    command = pathlib.Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(command), "--config", str(ROOT / ".importlinter"), "--no-cache", "--no-logo"],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout, result.stdout


def _private_uses(source: str, module: str):
    """(line, what) for each use in ``source`` of another sdsl_jax module's private name.

    Both spellings count: ``from sdsl_jax.x import _name`` and ``x._name`` on a
    name bound to an sdsl_jax module or object by an import.
    """
    tree = ast.parse(source)
    imported = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sdsl_jax"):
            for alias in node.names:
                if alias.name.startswith("_") and node.module != module:
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
                imported.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            imported.update(alias.asname or alias.name.split(".")[0] for alias in node.names
                            if alias.name.startswith("sdsl_jax"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in imported and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return sorted(found)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_uses_another_modules_private_names():
    offences = [f"{path.relative_to(ROOT)}:{line}: {what}"
                for path in sorted((ROOT / "sdsl_jax").rglob("*.py"))
                for line, what in _private_uses(path.read_text(encoding="utf-8"), _module_name(path))]
    assert not offences, "\n".join(offences)


def test_the_private_name_check_can_fail():
    source = ("from sdsl_jax.laws import throughput\n"
              "from sdsl_jax.laws.lambertw import _parts, lambertw\n"
              "from sdsl_jax.laws.throughput import _own\n"
              "x = throughput._optimum(lambertw.__doc__)\n")
    assert _private_uses(source, "sdsl_jax.laws.throughput") == [
        (2, "from sdsl_jax.laws.lambertw import _parts"), (4, "throughput._optimum")]
