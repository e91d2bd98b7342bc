"""Which env variables sedna_sam's code reads: an AST scan, shared by the manifest checks
(tests/test_manifests.py: templates and code cannot drift apart) and the configuration
reference check (tests/test_architecture.py: every name read is in sedna_compat.ENV).

Reads are ``os.environ[NAME]``, ``os.environ.get(NAME)``, ``os.environ.setdefault(NAME)``,
``os.getenv(NAME)``, ``sedna_compat.get_param(NAME)`` and calls of one-level wrappers: a
function whose parameter is passed on as the name to one of those (``pick("steps",
"TRAIN_STEPS")``). NAME is a string literal or a module-level string constant, of the same
module or imported from another one (``from sedna_sam.x import NAME_ENV``, ``x.NAME_ENV``).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sedna_sam"


@cache
def code_env_reads(package: Path = PACKAGE) -> tuple[frozenset, frozenset]:
    """(all env names the package reads, those read without a default: os.environ[NAME]),
    each as (subpackage, name) pairs ("" for a top-level module)."""
    paths = sorted(package.rglob("*.py"))
    trees = {module_name(p, package): ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in paths}
    local = {name: module_constants(tree) for name, tree in trees.items()}
    read, required = set(), set()
    for path, (name, tree) in zip(paths, trees.items()):
        rel = path.relative_to(package).parts
        subpackage = rel[0] if len(rel) > 1 else ""
        wrappers = env_wrappers(tree)
        constants = {**imported_constants(tree, local), **local[name]}
        for node in ast.walk(tree):
            env_name, has_default = env_read(node, wrappers, constants)
            if env_name is not None:
                read.add((subpackage, env_name))
                if not has_default:
                    required.add((subpackage, env_name))
    return frozenset(read), frozenset(required)


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def func_name(func: ast.AST) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def env_read_call(node: ast.Call) -> ast.AST | None:
    """The name argument of a direct env read call (environ.get, getenv, get_param,
    given_or_param)."""
    name = func_name(node.func)
    is_get = (
        name in ("get", "setdefault") and isinstance(node.func, ast.Attribute) and is_environ(node.func.value)
    )
    if (is_get or name in ("getenv", "get_param")) and node.args:
        return node.args[0]
    if name == "given_or_param" and len(node.args) > 1:
        return node.args[1]
    return None


def env_wrappers(tree: ast.AST) -> dict[str, int]:
    """{function name: index of the parameter it passes on as an env name}."""
    wrappers = {}
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params = [a.arg for a in fn.args.args]
        for node in ast.walk(fn):
            if isinstance(node, ast.Call):
                arg = env_read_call(node)
                if isinstance(arg, ast.Name) and arg.id in params:
                    wrappers[fn.name] = params.index(arg.id)
    return wrappers


def module_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "string"`` assignments (env names kept in a constant)."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = node.value.value
    return found


def imported_constants(tree: ast.AST, local: dict[str, dict[str, str]]) -> dict[str, str]:
    """String constants another module of the package defines, as this module names them:
    ``NAME`` for ``from module import NAME`` (anywhere in the module, lazy imports included)
    and ``alias.NAME`` for a module imported as ``alias``."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                as_name = alias.asname or alias.name
                if alias.name in local.get(node.module, {}):
                    found[as_name] = local[node.module][alias.name]
                submodule = f"{node.module}.{alias.name}"
                for constant, value in local.get(submodule, {}).items():
                    found[f"{as_name}.{constant}"] = value
        elif isinstance(node, ast.Import):
            for alias in node.names:
                for constant, value in local.get(alias.name, {}).items():
                    found[f"{alias.asname or alias.name}.{constant}"] = value
    return found


def constant_name(arg: ast.AST | None, constants: dict[str, str]) -> str | None:
    """The env name ``arg`` stands for: a string literal, a constant, ``module.CONSTANT``."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.Name):
        return constants.get(arg.id)
    if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name):
        return constants.get(f"{arg.value.id}.{arg.attr}")
    return None


def env_read(
    node: ast.AST, wrappers: dict[str, int] | None = None, constants: dict[str, str] | None = None
) -> tuple[str | None, bool]:
    """(NAME, has_default) when the node reads an env variable with a constant name (a
    literal, or a string constant holding one)."""
    constants = constants or {}
    if isinstance(node, ast.Subscript) and is_environ(node.value):
        name = constant_name(node.slice, constants)
        if name is not None and isinstance(getattr(node, "ctx", None), ast.Load):
            return name, False
    if isinstance(node, ast.Call):
        arg = env_read_call(node)
        index = (wrappers or {}).get(func_name(node.func) or "")
        if arg is None and index is not None and len(node.args) > index:
            arg = node.args[index]
        name = constant_name(arg, constants)
        if name is not None:
            return name, True  # .get/getenv/get_param: None (or the default) when unset
    return None, True
