"""Static checks of the Slicer extension: widget names against the .ui file, shipped files
against CMake, extension metadata (CMake vs the index entry, the licence, the minimum Slicer),
pinned requirements vs pyproject, and that the module runs without torch in its process."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "SAM2Refine"
UI_FILE = MODULE / "Resources" / "UI" / "SAM2Refine.ui"
WIDGET_CODE = [MODULE / "SAM2Refine.py", MODULE / "SAM2RefineLib" / "widgethelpers.py",
               ROOT / "Testing" / "Python" / "SAM2RefineTest.py"]


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).iter("widget")}


def ui_items(name: str) -> list[str]:
    return [i.find("property/string").text for i in ui_widgets()[name].findall("item")]


def ui_property(name: str, prop: str) -> str | None:
    for p in ui_widgets()[name].findall("property"):
        if p.get("name") == prop:
            return "".join(p.itertext()).strip()
    return None


def cmake_list(path: Path, variable: str) -> list[str]:
    text = path.read_text("utf-8")
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set in {path}"
    values = [v for v in match.group(1).split() if not v.startswith("#")]
    return [v.replace("${MODULE_NAME}", "SAM2Refine") for v in values]


def cmake_fields() -> dict[str, str]:
    text = (ROOT / "CMakeLists.txt").read_text("utf-8")
    return dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))


def index_entry() -> dict:
    import json

    return json.loads((ROOT / "SAM2Refine.json").read_text("utf-8"))


def repo_path_of(url: str) -> Path:
    prefix = "https://raw.githubusercontent.com/sam2refine/SlicerSAM2Refine/main/"
    assert url.startswith(prefix), url
    return ROOT / url[len(prefix):]


# ----- the .ui file ----------------------------------------------------------------------------
def test_every_widget_the_code_uses_is_in_the_ui_file():
    used = set()
    for path in WIDGET_CODE:
        used |= set(re.findall(r"\bui\.(\w+)", path.read_text("utf-8")))
    assert len(used) > 30
    assert sorted(used - set(ui_widgets())) == []


def test_ui_offers_what_the_engine_accepts():
    from sam2refine.image.intensity import preset_names
    from sam2refine.image.slicing import AXES
    from sam2refine.runtime import DEVICES
    from sam2refine.sam.model import SUPPORTED_IMAGE_SIZES
    from sam2refine.sam.prompting import MASK_MODES

    assert ui_items("intensityComboBox") == preset_names()
    assert set(ui_items("deviceComboBox")) == set(DEVICES)
    assert {int(v) for v in ui_items("imageSizeComboBox")} <= set(SUPPORTED_IMAGE_SIZES)
    assert ui_items("axisComboBox") == list(AXES)
    assert ui_items("maskModeComboBox") == list(MASK_MODES)


def test_shortcuts_live_on_the_main_window_not_on_the_buttons():
    """Keys work with the mouse over a slice view: they are main-window shortcuts installed on
    module enter (as Segment Editor's), so the buttons must not carry the same keys (two
    shortcuts with one key are ambiguous in Qt and neither fires)."""
    from SAM2RefineLib.widgethelpers import SHORTCUTS

    import SAM2Refine

    assert set(SHORTCUTS) == {"A", "X", "W", "M", "L", "P", "Ctrl+Z"}
    single = [k for k in SHORTCUTS if len(k) == 1]
    assert not set(single) & set("BFRV")  # Slicer's own slice-view keys
    for method in SHORTCUTS.values():
        assert callable(getattr(SAM2Refine.SAM2RefineWidget, method)), method
    assert all(ui_property(name, "shortcut") is None for name in ui_widgets())
    help_text = (MODULE / "SAM2Refine.py").read_text("utf-8")
    for key in SHORTCUTS:
        assert f"{key} " in help_text  # the help lists every key


def test_every_ui_widget_class_is_declared_or_standard():
    tree = ET.parse(UI_FILE)
    declared = {c.findtext("class") for c in tree.iter("customwidget")}
    used = {w.get("class") for w in tree.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared


# ----- shipped files ---------------------------------------------------------------------------
def test_every_module_file_is_listed_in_cmake():
    cmake = MODULE / "CMakeLists.txt"
    scripts = cmake_list(cmake, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(cmake, "MODULE_PYTHON_RESOURCES")
    on_disk = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sorted(on_disk) == sorted(scripts)
    shipped = {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*")
               if p.is_file()}
    assert sorted(shipped) == sorted(resources)


def test_the_bundled_engine_is_complete():
    cmake = MODULE / "CMakeLists.txt"
    scripts = cmake_list(cmake, "SAM2REFINE_ENGINE_SCRIPTS")
    resources = cmake_list(cmake, "SAM2REFINE_ENGINE_RESOURCES")
    engine = ROOT / "sam2refine"
    on_disk = {p.relative_to(ROOT).as_posix() for p in engine.rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sorted(on_disk) == sorted(scripts), "list new engine files in SAM2Refine/CMakeLists"
    data = {p.relative_to(ROOT).as_posix() for p in (engine / "data").iterdir() if p.is_file()}
    assert sorted(data) == sorted(resources)


def test_cmake_wires_module_and_tests():
    top = (ROOT / "CMakeLists.txt").read_text("utf-8")
    assert re.search(r"^add_subdirectory\(SAM2Refine\)$", top, re.M)
    assert "add_subdirectory(Testing)" in top
    assert "add_subdirectory(Python)" in (ROOT / "Testing" / "CMakeLists.txt").read_text("utf-8")
    testing = (ROOT / "Testing" / "Python" / "CMakeLists.txt").read_text("utf-8")
    assert "SCRIPT SAM2RefineTest.py" in testing
    # slicer_add_python_unittest adds the module paths itself; given twice, CTK takes the
    # second list for files to open.
    code = "".join(line.split("#")[0] for line in testing.splitlines())
    assert "--additional-module-paths" not in code and "SLICER_ARGS" not in code
    assert (ROOT / "Testing" / "Python" / "SAM2RefineTest.py").is_file()
    module = (MODULE / "CMakeLists.txt").read_text("utf-8")
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module
    assert "WITH_GENERIC_TESTS" in module


# ----- extension metadata ----------------------------------------------------------------------
# The Extensions Index's catalog-entry schema v1.0.1 (Slicer/Schemas): required keys, types,
# and "additionalProperties": false.
INDEX_SCHEMA = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str,
                "scm_type": str, "build_dependencies": list, "build_subdirectory": str,
                "enabled": bool, "tier": int}
INDEX_REQUIRED = ("$schema", "category", "scm_url")


def test_extension_metadata_is_filled_and_consistent():
    cmake, entry = cmake_fields(), index_entry()
    for field in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL",
                  "SCREENSHOTURLS", "DEPENDS"):
        assert cmake[f"EXTENSION_{field}"], f"EXTENSION_{field} is empty"
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert set(entry) <= set(INDEX_SCHEMA) and all(k in entry for k in INDEX_REQUIRED)
    assert all(isinstance(entry[k], INDEX_SCHEMA[k]) for k in entry)
    assert entry["scm_type"] in ("git", "local") and entry["tier"] in (1, 3, 5)
    assert entry["category"] == cmake["EXTENSION_CATEGORY"] == "Segmentation"
    assert entry["build_dependencies"] == cmake["EXTENSION_DEPENDS"].split() == ["PyTorch"]
    assert entry["scm_url"].removesuffix(".git") in cmake["EXTENSION_HOMEPAGE"]
    assert not (ROOT / "SAM2Refine.s4ext").exists()  # index branches 5.8+ read JSON entries


def test_licence_and_minimum_slicer_are_declared():
    licence = (ROOT / "LICENSE").read_text("utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
    from SAM2RefineLib import dependencies

    minimum = ".".join(str(v) for v in dependencies.MINIMUM_SLICER)
    top = (ROOT / "CMakeLists.txt").read_text("utf-8")
    assert f'set(SAM2REFINE_MINIMUM_SLICER_VERSION "{minimum}")' in top
    assert "Slicer_VERSION VERSION_LESS SAM2REFINE_MINIMUM_SLICER_VERSION" in top
    assert f"Needs 3D Slicer {minimum} or later" in cmake_fields()["EXTENSION_DESCRIPTION"]
    for readme in (ROOT / "README.md", MODULE / "README.md"):
        assert f"3D Slicer {minimum}" in readme.read_text("utf-8"), readme


def test_icon_and_screenshots_exist():
    icon = repo_path_of(cmake_fields()["EXTENSION_ICONURL"])
    header = icon.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (128, 128)
    assert (MODULE / "Resources" / "Icons" / "SAM2Refine.png").read_bytes() == icon.read_bytes()
    for url in cmake_fields()["EXTENSION_SCREENSHOTURLS"].split():
        assert repo_path_of(url).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----- requirements ----------------------------------------------------------------------------
def test_pinned_requirements_follow_pyproject():
    from packaging.requirements import Requirement
    from packaging.version import Version
    from SAM2RefineLib import dependencies as deps

    ours = {"torch": Requirement("torch" + deps.TORCH_REQUIREMENT).specifier}
    for text in (deps.SAM2_REQUIREMENT, *deps.ENGINE_REQUIREMENTS):
        req = Requirement(text)
        ours[req.name.lower()] = req.specifier
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    skipped = {n.lower() for n in deps.PROVIDED_BY_SLICER}
    for text in project["dependencies"]:
        req = Requirement(text)
        name = req.name.lower()
        if name in skipped:
            continue
        assert name in ours, f"{name} (pyproject) is not installed by the module"
        mine = {(s.operator, s.version) for s in ours[name]}
        for clause in req.specifier:
            raised = clause.operator == ">=" and any(
                op == ">=" and Version(v) >= Version(clause.version) for op, v in mine)
            assert (clause.operator, clause.version) in mine or raised, f"{name}: {clause}"


def test_module_code_parses_as_python_3_9():
    """On Slicer 5.6 / 5.8 (Python 3.9) the module must load to say which Slicer it needs."""
    import ast

    for path in [MODULE / "SAM2Refine.py", *(MODULE / "SAM2RefineLib").glob("*.py")]:
        ast.parse(path.read_text("utf-8"), str(path), feature_version=(3, 9))


# ----- loading without torch -------------------------------------------------------------------
BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "sam2", "monai", "fastapi", "uvicorn"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
sys.path[:0] = [{root!r}, {module!r}]
import numpy as np
from tests.slicer.conftest import _wire
core = _wire()
import SAM2Refine
from SAM2RefineLib import (autosegment, backends, connection, dependencies, history, logic,
                           parameters, processes, promptnodes, prompts, promptsteps,
                           propagation, segments, tasks, undo, volumes, widgethelpers)
from SAM2RefineLib.volumes import ijk_to_ras
from sam2refine import EngineSettings, LocalEngine
engine = LocalEngine(EngineSettings(checkpoint={checkpoint!r}, image_size=256, device="cpu"))
node = core.load_volume({ct!r})
logic = SAM2Refine.SAM2RefineLogic(core.scene)
logic.useEngine(engine)
logic.startSession(node)
liver = logic.addSegment("liver")
logic.pointNodes(liver)[0].AddControlPoint(*(ijk_to_ras(node) @ np.array([77, 57, 24, 1.0]))[:3])
logic.addPoints(liver)
logic.propagate(frameRange=(23, 25))
assert logic.segmentMask(liver).any()
logic.undo()
logic.shutdown()
engine.stop()
assert [m for m in sys.modules if m.split(".")[0] in ("torch", "sam2")] == []
print("ok")
"""


def test_module_runs_without_torch_in_slicers_process(tiny_checkpoint, totalseg_dir):
    """A whole session (engine start, upload, click, propagation, undo) with torch, SAM 2,
    MONAI and the server's packages unimportable in this process: they live in the engine."""
    pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    code = BLOCK_TORCH.format(root=str(ROOT), module=str(MODULE), checkpoint=str(tiny_checkpoint),
                              ct=str(totalseg_dir / "example_ct_sm.nii.gz"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
