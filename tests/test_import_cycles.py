"""No module of `ctpm` takes part in an import cycle, and the engine keeps its layers
(docs/architecture.md): the subsystems import no command chapter and no pipeline module.

The graph is built from the package's own source with `ast`, so it sees every import,
including the ones inside functions: a function-local import that closes a cycle only hides
it from the interpreter at load time, it does not remove the dependency, so it counts. The
command chapters that engine/handlers.py imports by name (lazily) are its edges too.
`from pkg import name` depends on `pkg.name` when that is a module of ours, else on `pkg`
(whose `__init__` defines the name).
"""
import ast
import pathlib

import ctpm
from ctpm.engine import handlers

ROOT = pathlib.Path(ctpm.__file__).parent


def _modules() -> dict:
    """{dotted name: (path, is_package)} for every module of the package."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ["ctpm", *path.relative_to(ROOT).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _targets(name: str, is_package: bool, node) -> list:
    """The modules an import statement names: `import a.b`, `from a import b` (the module
    a.b if there is one, else a), relative imports resolved from `name`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = name.split(".") if is_package else name.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module
    return [(f"{base}.{alias.name}", base) for alias in node.names]


def import_graph() -> dict:
    """{module: set of ctpm modules it imports}, from module-level and function-local imports.

    Importing a.b.c also runs the packages a and a.b: they are edges too, except the
    importer's own packages (they are already being imported when it runs)."""
    modules = _modules()
    graph = {}
    for name, (path, is_package) in modules.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(name, is_package, node):
                if isinstance(target, tuple):           # from base import x
                    target = target[0] if target[0] in modules else target[1]
                if target not in modules:
                    continue
                deps.add(target)
                parts = target.split(".")
                deps.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts)))
                            if p in modules and p not in own)
        deps.discard(name)
        graph[name] = deps
    # handlers.py imports its command chapters by name when a command first needs them
    graph["ctpm.engine.handlers"] |= handlers.chapters()
    return graph


def _cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_graph_sees_the_engine():
    graph = import_graph()
    assert "ctpm.engine.subsystems.state" in graph["ctpm.engine.tpm"]
    assert "ctpm.engine.commands.nv" in graph["ctpm.engine.handlers"]
    # a function-local import is an edge too
    assert "ctpm.engine.tpm" in graph["ctpm.testing"]


def test_cycle_detection_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_in_an_import_cycle():
    assert _cycles(import_graph()) == []


def test_subsystems_import_no_command_and_no_pipeline():
    graph = import_graph()
    bad = {name: sorted(d for d in deps if d.startswith("ctpm.engine.")
                        and not d.startswith("ctpm.engine.subsystems"))
           for name, deps in graph.items() if name.startswith("ctpm.engine.subsystems")}
    assert {k: v for k, v in bad.items() if v} == {}

