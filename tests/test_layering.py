"""Acyclic layering: built from the source with ``ast``, counting imports inside functions.

Data flows config -> params -> layers -> models -> objectives -> train/generate -> cli; nothing
imports a module of a higher layer, and there is no import cycle among llmzoo modules.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "llmzoo"

# Module prefix -> layer; the longest matching prefix wins. A module may import its own layer
# and any lower one.
LAYERS = {
    "llmzoo.errors": 0,
    "llmzoo.config": 0,
    "llmzoo.config_io": 0,
    "llmzoo.config_rules": 0,
    "llmzoo.config_tune": 0,
    "llmzoo.config_objective": 0,
    "llmzoo.params": 1,
    "llmzoo.sharding": 1,
    "llmzoo.orbax_quiet": 1,
    "llmzoo.viz": 1,
    "llmzoo.data": 1,
    "llmzoo.layers": 2,
    "llmzoo.compress": 2,
    "llmzoo.models": 3,
    "llmzoo.presets": 4,
    "llmzoo.objectives": 4,
    "llmzoo.hf": 4,
    "llmzoo.inspect": 4,
    "llmzoo.run_dir": 5,
    "llmzoo.lora_run": 5,
    "llmzoo.compress_run": 5,
    "llmzoo.hf.convert": 6,
    "llmzoo.generate": 6,
    "llmzoo.train": 6,
    "llmzoo.wordvec": 6,
    "llmzoo.eval": 7,
    "llmzoo.eval_tasks": 7,
    "llmzoo.eval_sft": 7,
    "llmzoo.embed": 7,
    "llmzoo.cli": 8,
    "llmzoo.cli_study": 8,
    "llmzoo.cli_runs": 8,
    "llmzoo.cli_inspect": 8,
    "llmzoo.compare": 7,
    "llmzoo.__main__": 8,
    "llmzoo": 9,  # the package __init__ re-exports the public API
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _edges(mods: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph


def _layer(mod: str) -> int:
    prefix = max((p for p in LAYERS if mod == p or mod.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a list of modules, or None (iterative three-colour DFS)."""
    colour, parent = dict.fromkeys(graph, 0), {}
    for root in graph:
        if colour[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
            elif colour[child] == 1:
                path = [node]
                while path[-1] != child:
                    path.append(parent[path[-1]])
                return path[::-1]
            elif colour[child] == 0:
                colour[child], parent[child] = 1, node
                stack.append((child, iter(sorted(graph[child]))))
    return None


MODULES = _modules()
GRAPH = _edges(MODULES)


def test_no_import_cycles():
    # Package __init__ modules only re-export; they are not part of the layering.
    inits = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    graph = {m: set() if m in inits else ts - inits for m, ts in GRAPH.items()}
    cycle = _cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_nothing_imports_a_higher_layer():
    upward = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, ts in GRAPH.items()
        for t in ts
        if _layer(t) > _layer(m) and not t == "llmzoo"
    ]
    assert not upward, "\n".join(upward)


def test_hf_never_imports_train_and_config_imports_no_layer():
    for mod, targets in GRAPH.items():
        if mod.startswith("llmzoo.hf"):
            assert not any(t.startswith("llmzoo.train") for t in targets), mod
    leaves = {
        "llmzoo.errors",
        "llmzoo.config_rules",
        "llmzoo.config_tune",
        "llmzoo.config_objective",
    }
    for mod in leaves - {"llmzoo.errors"} | {"llmzoo.config"}:
        assert GRAPH[mod] <= leaves, mod


def test_the_checker_sees_a_cycle_and_an_upward_import():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": set()}) is None
    assert _layer("llmzoo.models.decoder") < _layer("llmzoo.train.loop")
    assert "llmzoo.train.loop" in GRAPH["llmzoo.cli"]  # imported inside a function: counted
