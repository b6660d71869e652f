"""The layout DESIGN.md asks for, checked on the source: the library never imports its CLI, no module
imports itself back through others, each room uses only the rooms below it, and only the runtime knows which
runtime runs a model."""

import ast
from pathlib import Path

SOURCE = Path(__file__).parents[1] / "src"
# DESIGN.md's rooms, lowest first; `api` (the public verbs) sits under `verbs` (their stages), which the pipeline
# and the CLI run. The runtime runs models; compression samples through it, never the other way round.
ROOMS = [{"errors", "results", "schema", "settings", "sampling", "models", "data"}, {"runtime"}, {"compress"},
         {"train", "evaluation", "exporters"}, {"api", "server", "finetuning", "distillation", "synthesis"},
         {"verbs"}, {"pipeline"}, {"cli"}]
LEVEL = {room: level for level, rooms in enumerate(ROOMS) for room in rooms}


def modules() -> dict[str, Path]:
    found = {}
    for path in (SOURCE / "slmkit").rglob("*.py"):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports() -> dict[str, set[str]]:
    """Each module's slmkit imports, at any depth (inside functions too), as the modules they name."""
    known = modules()

    def owner(name: str) -> str:
        while name not in known:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in known.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {owner(alias.name) for alias in node.names if alias.name.startswith("slmkit")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("slmkit"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in known else owner(node.module))
        graph[module] = targets - {module}
    return graph


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LEVEL) else None


def test_no_module_outside_the_cli_imports_it():
    offenders = {module: sorted(t for t in targets if t.startswith("slmkit.cli"))
                 for module, targets in imports().items() if not module.startswith("slmkit.cli")}
    assert {module: found for module, found in offenders.items() if found} == {}


def test_there_is_no_import_cycle():
    graph, state, cycles = imports(), {}, []

    def visit(module: str, path: list[str]) -> None:  # depth-first; a module met again on the path closes a cycle
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_no_package_imports_itself_back_through_another():
    """Rooms on one level may use each other, but never both ways round (function-level imports count)."""
    uses = {(room(module), room(target)) for module, targets in imports().items() for target in targets
            if room(module) in LEVEL and room(target) in LEVEL and room(module) != room(target)}
    assert sorted(f"{a} <-> {b}" for a, b in uses if (b, a) in uses and a < b) == []


def test_each_room_uses_only_the_rooms_below_it():
    upward = sorted(f"{module} -> {target}" for module, targets in imports().items() for target in targets
                    if room(module) in LEVEL and room(target) in LEVEL and LEVEL[room(target)] > LEVEL[room(module)])
    assert upward == []


def test_the_checks_see_real_imports():
    graph = imports()
    assert "slmkit.cli.common" in graph["slmkit.cli.bench"]  # a module-level import
    assert "slmkit.runtime.open" in graph["slmkit.runtime"]
    assert any(target.startswith("slmkit.runtime") for target in graph["slmkit.evaluation.bench"])


def runtime_peeks(source: str) -> list[str]:
    """Where code branches on a model's runtime (`x.backend` in a comparison) or reaches into llama.cpp's own
    object (`x.llm`), as "line: what". A plain name `backend` is a caller's own choice or a recorded label
    (api.load's argument, a report row), not a model asked which runtime runs it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "llm":
            found.append(f"{node.lineno}: .llm")
        elif isinstance(node, ast.Compare) and any(isinstance(side, ast.Attribute) and side.attr == "backend"
                                                   for side in [node.left, *node.comparators]):
            found.append(f"{node.lineno}: .backend compared")
    return found


def test_only_the_runtime_branches_on_which_runtime_runs_a_model():
    peeks = {module: runtime_peeks(path.read_text()) for module, path in modules().items()
             if room(module) != "runtime"}
    assert {module: found for module, found in peeks.items() if found} == {}


def test_the_runtime_check_sees_branches_and_reaches():
    source = """
if lm.backend == "llamacpp":
    batch = LlamaBatch(lm.llm, slots, length)
elif "torch" != lm.info().backend:
    pass
"""
    assert sorted(runtime_peeks(source)) == ["2: .backend compared", "3: .llm", "4: .backend compared"]


def test_no_module_is_named_like_a_verb():
    """`import slmkit.<name>` would set the module as the package's attribute and hide the verb `slmkit.<name>`."""
    import slmkit

    names = {path.stem if path.suffix else path.name for path in (SOURCE / "slmkit").iterdir()}
    assert names & set(slmkit._VERBS) == set()
