"""The package's shape: no import cycles between its modules (docs/architecture.md
section 2). Imports inside functions are the lazy imports of optional or heavy
dependencies and do not count; module-level ones (also under ``if``/``try``) do."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sedna_sam"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(path: Path, modules: set[str]) -> set[str]:
    """Our modules that ``path`` imports at module level."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    statements = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, (ast.If, ast.Try)):
            statements += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
            for handler in getattr(node, "handlers", []):
                statements += handler.body
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                found.add(submodule if submodule in modules else origin)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): module_level_imports(p, modules) for p in paths}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_scan_sees_imports_and_cycles():
    graph = import_graph()
    assert "sedna_sam.errors" in graph["sedna_sam.storage"] or "sedna_sam.errors" in graph["sedna_sam.labels"]
    assert "sedna_sam.cloud.queue" in graph["sedna_sam.cloud.queue_postgres"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_configuration_reference_is_generated_from_the_env_contract():
    from sedna_sam.sedna_compat import ENV, env_reference_markdown

    doc = (PACKAGE.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert doc == env_reference_markdown(), "docs/configuration.md is stale: regenerate it (see its header)"
    assert all(f"| `{name}` |" in doc for name in ENV)


def test_every_env_read_is_in_the_configuration_reference():
    """Every env name read anywhere in sedna_sam/ (an AST scan: os.environ[...], .get,
    getenv, get_param and their one-level wrappers, with literal names or string constants,
    imported ones too) is in sedna_compat.ENV, so docs/configuration.md lists it."""
    from env_scan import code_env_reads

    from sedna_sam.sedna_compat import ENV

    read, _ = code_env_reads()
    known = set(ENV) | {name.upper() for name in ENV}  # get_param looks names up upper-cased too
    unregistered = sorted(
        {f"{name} (read in {package or 'sedna_sam'})" for package, name in read if name not in known}
    )
    assert not unregistered, (
        "env variables read but not in sedna_sam.sedna_compat.ENV (add them with their meaning, default "
        "and secret flag, then regenerate docs/configuration.md): " + ", ".join(unregistered)
    )
    assert {"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "SEDNA_SAM_SHARD_COUNT", "HF_HUB_OFFLINE"} <= {
        name for _, name in read
    }, "the scan no longer sees reads through constants and imported constants"


def test_the_env_scan_catches_an_unregistered_read(tmp_path):
    """A read through a literal, a local constant, an imported constant or a module
    attribute is found; a name kept in a variable is not (it cannot be checked)."""
    from env_scan import code_env_reads

    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "names.py").write_text('FROM_IMPORT = "NEW_A"\nFROM_MODULE = "NEW_B"\n')
    (package / "sub" / "reader.py").write_text(
        "import os\n"
        "from pkg import names\n"
        "from pkg.names import FROM_IMPORT\n"
        'LOCAL = "NEW_C"\n'
        "def f(variable):\n"
        "    os.environ.get(FROM_IMPORT)\n"
        "    os.getenv(names.FROM_MODULE)\n"
        "    os.environ[LOCAL]\n"
        '    os.environ.get("NEW_D", "x")\n'
        "    os.environ.get(variable)\n"
    )
    read, required = code_env_reads(package)
    assert read == {("sub", "NEW_A"), ("sub", "NEW_B"), ("sub", "NEW_C"), ("sub", "NEW_D")}
    assert required == {("sub", "NEW_C")}


MAX_MODULE_LINES = 450  # one idea per file; past this a module holds two (docs/architecture.md)


def test_no_module_is_over_the_size_limit():
    sizes = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    over = sorted(
        f"{p.relative_to(PACKAGE.parent)} ({n} lines)" for p, n in sizes.items() if n > MAX_MODULE_LINES
    )
    assert not over, f"modules over {MAX_MODULE_LINES} lines: split them by concept: " + ", ".join(over)
    assert max(sizes.values()) > 100  # the scan read the package
