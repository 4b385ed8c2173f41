"""The package's layering: no module imports from a layer above its own, lazy imports included."""

import ast
from pathlib import Path

import rlmask

PACKAGE = Path(rlmask.__file__).parent
# Lowest first. A module may import from its own layer or a lower one, never from a higher one.
LAYERS = [
    ("rlmask", "rlmask.errors", "rlmask.io", "rlmask.runtime", "rlmask.config"),
    ("rlmask.data", "rlmask.models", "rlmask.masks"),
    ("rlmask.agents", "rlmask.evaluate", "rlmask.report"),
    ("rlmask.train",),
    ("rlmask.experiments", "rlmask.bench"),
    ("rlmask.cli", "rlmask.__main__"),
]


def layer_of(module: str) -> int:
    """The layer of a dotted module name: that of its longest listed prefix."""
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    assert found is not None, f"{module} is in no layer: add it to LAYERS"
    return found


def imports_of(path: Path) -> set[str]:
    """Every rlmask module imported anywhere in ``path`` (top level or inside functions)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parent = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join(parent + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m == "rlmask" or m.startswith("rlmask.")}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"), path


def test_every_module_has_a_layer():
    for name, _ in modules():
        layer_of(name)


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for name, path in modules():
        for target in imports_of(path):
            if target == "rlmask.__version__":
                target = "rlmask"
            if layer_of(target) > layer_of(name):
                upward.append(f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})")
    assert not upward, "\n".join(upward)


def test_the_check_can_fail():
    # The rule is live: an upward import in a made-up module is reported.
    assert layer_of("rlmask.train.loop") > layer_of("rlmask.agents.base")
    assert layer_of("rlmask.experiments.compare") > layer_of("rlmask.train.loop")
