"""Static checks of the Slicer extension: widget names against the .ui file, shipped files
against CMake, extension metadata (CMake vs .s4ext), pinned requirements vs pyproject, and
that the module loads without torch."""

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
    text = path.read_text()
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set in {path}"
    values = [v for v in match.group(1).split() if not v.startswith("#")]
    return [v.replace("${MODULE_NAME}", "SAM2Refine") for v in values]


def cmake_fields() -> dict[str, str]:
    text = (ROOT / "CMakeLists.txt").read_text()
    return dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))


def s4ext_fields() -> dict[str, str]:
    fields = {}
    for line in (ROOT / "SAM2Refine.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    return fields


def repo_path_of(url: str) -> Path:
    prefix = "https://raw.githubusercontent.com/sam2refine/SlicerSAM2Refine/main/"
    assert url.startswith(prefix), url
    return ROOT / url[len(prefix):]


# ----- the .ui file ----------------------------------------------------------------------------
def test_every_widget_the_code_uses_is_in_the_ui_file():
    used = set()
    for path in WIDGET_CODE:
        used |= set(re.findall(r"\bui\.(\w+)", path.read_text()))
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


def test_prompt_tools_have_single_key_shortcuts_and_undo_is_ctrl_z():
    keys = {name: ui_property(name, "shortcut") for name in (
        "positivePointButton", "negativePointButton", "boxButton", "maskFromSegmentButton",
        "propagateButton", "lockSegmentButton")}
    assert all(k is not None and len(k) == 1 for k in keys.values()), keys
    assert len(set(keys.values())) == len(keys)
    assert not set(keys.values()) & set("BFRV")  # Slicer's own slice-view keys
    assert ui_property("undoButton", "shortcut") == "Ctrl+Z"


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
    top = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"^add_subdirectory\(SAM2Refine\)$", top, re.M)
    assert "add_subdirectory(Testing)" in top
    assert "add_subdirectory(Python)" in (ROOT / "Testing" / "CMakeLists.txt").read_text()
    testing = (ROOT / "Testing" / "Python" / "CMakeLists.txt").read_text()
    assert "SCRIPT SAM2RefineTest.py" in testing
    assert (ROOT / "Testing" / "Python" / "SAM2RefineTest.py").is_file()
    module = (MODULE / "CMakeLists.txt").read_text()
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module
    assert "WITH_GENERIC_TESTS" in module


# ----- extension metadata ----------------------------------------------------------------------
def test_extension_metadata_is_filled_and_consistent():
    cmake, s4ext = cmake_fields(), s4ext_fields()
    pairs = {"HOMEPAGE": "homepage", "CATEGORY": "category", "CONTRIBUTORS": "contributors",
             "DESCRIPTION": "description", "ICONURL": "iconurl",
             "SCREENSHOTURLS": "screenshoturls", "DEPENDS": "depends"}
    for field, key in pairs.items():
        assert cmake[f"EXTENSION_{field}"], f"EXTENSION_{field} is empty"
        assert cmake[f"EXTENSION_{field}"] == s4ext[key], field
    assert cmake["EXTENSION_CATEGORY"] == "Segmentation"
    assert cmake["EXTENSION_DEPENDS"] == "PyTorch"
    assert s4ext["scmurl"].removesuffix(".git") in cmake["EXTENSION_HOMEPAGE"]


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

    ours = {}
    for text in (*deps.TORCH_REQUIREMENTS, deps.SAM2_REQUIREMENT, *deps.PIP_REQUIREMENTS,
                 *deps.DICOM_SEG_REQUIREMENTS):
        req = Requirement(text)
        ours[req.name.lower()] = req.specifier
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    skipped = {n.lower() for n in (*deps.PROVIDED_BY_SLICER, *deps.SERVER_ONLY)}
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


# ----- loading without torch -------------------------------------------------------------------
BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "sam2"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, {module!r})
import SAM2Refine
from SAM2RefineLib import backends, dependencies, logic, prompts, segments, tasks, undo, volumes
from SAM2RefineLib import widgethelpers
plan = dependencies.plan(lambda name: None, {{}}, pytorch_extension=True)
assert plan.steps and not plan.restart_needed
SAM2Refine.SAM2RefineLogic()
assert [m for m in sys.modules if m.split(".")[0] in ("torch", "sam2")] == []
print("ok")
"""


def test_module_loads_without_torch():
    pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    code = BLOCK_TORCH.format(module=str(MODULE))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
