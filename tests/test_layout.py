"""The house rules, read from the imports (every import of every module, at the top or inside a function):
`mol_toolkit/` is a ground floor and three wings, nothing imports upward, the wings `evaluation/` and
`interference/` may use `training/` but never each other, the model packages import nothing of `mol_toolkit`, and
no module imports itself back through others (no cycles), the kernel's modules included."""

import ast

import pytest
from conftest import PROJECT


GROUND = {"mol_toolkit", "mol_toolkit.languages", "mol_toolkit.run_config", "mol_toolkit.grouping",
          "mol_toolkit.text_sources", "mol_toolkit.files"}
WINGS = ("training", "interference", "evaluation")
# layer -> the layers it may import (itself included)
ALLOWED = {"ground": {"ground"}, "training": {"ground", "training"},
           "interference": {"ground", "training", "interference"}, "evaluation": {"ground", "training", "evaluation"}}
KERNEL = PROJECT / "hub_kernels" / "mol-grouped-gemm" / "torch-ext"


def module_name(path, root):
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root, package):
    return {module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}


def imported(path, name, known):
    """The known modules `path` (module `name`) imports: absolute and relative, `from X import module` included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = []
            for alias in node.names:  # `import a.b.c` imports a.b.c, or the nearest package of it that is known
                target = alias.name
                while target and target not in known:
                    target = target.rpartition(".")[0]
                targets.append(target)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from package import module` imports the module; `from module import name`, the module (a module that
            # is not among the known ones, e.g. a generated `_ops`, is not followed)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in known and target != name)
    return found


def layer(name):
    if name in GROUND:
        return "ground"
    wing = name.split(".")[1]
    assert wing in WINGS, f"{name} is neither on the ground floor {sorted(GROUND)} nor in a wing {WINGS}"
    return wing


def graph(root, packages):
    known = {}
    for package in packages:
        known.update(modules(root, package))
    return {name: imported(path, name, known) for name, path in known.items()}


def test_every_toolkit_module_is_on_the_ground_floor_or_in_a_wing_and_nothing_imports_upward():
    edges = graph(PROJECT, ["mol_toolkit"])
    assert {"mol_toolkit.training.trainer", "mol_toolkit.training.mlm_data", "mol_toolkit.interference.sweep",
            "mol_toolkit.evaluation.run"} <= set(edges)
    wrong = [f"{a} -> {b}" for a, targets in edges.items() for b in targets if layer(b) not in ALLOWED[layer(a)]]
    assert not wrong, wrong


def test_the_model_packages_import_nothing_of_the_toolkit():
    for package in ("modeling_mol", "configuration_mol"):
        for path in (PROJECT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
            names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
            assert not [n for n in names if n.split(".")[0] == "mol_toolkit"], path


def cycles(edges):
    """Every import cycle, as a list of modules (Tarjan's strongly connected components of size > 1)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("root, packages", [
    (PROJECT, ["mol_toolkit", "modeling_mol", "configuration_mol"]),
    (KERNEL, ["mol_grouped_gemm"]),
], ids=["project", "kernel"])
def test_no_import_cycles(root, packages):
    assert cycles(graph(root, packages)) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# -- one home for each shared list ------------------------------------------------------------------------------------

def test_one_list_of_grouped_gemm_backends_and_a_chooser_for_each():
    from configuration_mol.configuration_mol import GROUPED_GEMM_BACKENDS
    from modeling_mol import mol_grouped_gemm
    from mol_toolkit.run_config import CHECKS

    assert mol_grouped_gemm.BACKENDS is GROUPED_GEMM_BACKENDS
    assert list(mol_grouped_gemm.CHOOSERS) == list(GROUPED_GEMM_BACKENDS[1:])  # the order auto tries them
    with pytest.raises(ValueError, match=r"grouped_gemm_backend 'cutlass' is not valid: use one of"):
        CHECKS["grouped_gemm_backend"]("grouped_gemm_backend", "cutlass")


def test_every_run_config_key_has_its_check():
    from mol_toolkit.run_config import CHECKS, KEYS

    assert set(CHECKS) == set(KEYS)
