"""The engine's shape, read from its source: rooms, one-way imports, no Slicer in the core."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sam2refine"
ROOMS = ("image", "io", "sam", "auto", "promptgen", "finetune", "datasets", "remote", "cli")
# Rooms below may not import rooms above them (the order data flows in).
LAYERS = (("errors", "version"), ("runtime",), ("image",), ("io",), ("datasets",),
          ("sam", "promptgen"), ("auto",), ("finetune", "evaluate"), ("remote",), ("cli",),
          ("__main__",))
FOREIGN = ("slicer", "qt", "ctk", "vtk", "mrml", "SAM2RefineLib", "trame", "PythonQt")
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count)."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    package = _module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def engine_graph() -> dict[str, set[str]]:
    """Module -> the engine modules it imports."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    return {name: {m for m in _imports(path) if m in files and m != name}
            for name, path in files.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_room_has_a_one_line_purpose():
    for room in ROOMS:
        init = PACKAGE / room / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text("utf-8")))
        assert doc and "\n" not in doc.strip(), f"{init} needs a one-line docstring"


def test_no_import_circle_between_modules():
    graph = engine_graph()
    graph.pop("sam2refine", None)  # the public face imports lazily, by name only
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_rooms_import_only_rooms_below_them():
    layer = {room: n for n, rooms in enumerate(LAYERS) for room in rooms}
    wrong = []
    for module, targets in engine_graph().items():
        if module == "sam2refine":
            continue
        for target in targets:
            if target == "sam2refine" or layer[_room(target)] > layer[_room(module)]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_the_engine_imports_no_slicer_qt_or_web_code():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in FOREIGN or top.lower() in {"slicer", "qt", "vtk", "ctk"}:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, wrong


def test_the_core_does_not_import_the_server_or_the_command_line():
    core = {"image", "io", "sam", "auto", "promptgen", "finetune", "datasets", "errors",
            "runtime", "evaluate"}
    wrong = [f"{m} -> {t}" for m, targets in engine_graph().items() if _room(m) in core
             for t in targets if _room(t) in {"remote", "cli"}]
    assert not wrong, wrong


def test_no_engine_file_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text("utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_importing_the_package_does_not_import_torch():
    code = ("import sam2refine, sys; names = sam2refine.__all__; "
            "assert 'torch' not in sys.modules, 'torch was imported'; print(len(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("name", ["load_volume", "Session", "load_model", "write_segmentation",
                                  "export_dicom_seg", "auto_segment", "Client", "SAM2RefineError",
                                  "__version__"])
def test_the_public_api_names(name):
    import sam2refine

    assert name in sam2refine.__all__
    assert getattr(sam2refine, name) is not None
