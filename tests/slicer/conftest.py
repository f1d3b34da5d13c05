"""Slicer's core libraries (the `slicer-core` wheel: MRML, logics, no Qt) wired the way a
Slicer application does it (as trame-slicer's SlicerApp does), and the SAM2Refine module on
the import path, so the module's Logic runs here exactly as in Slicer's Python console; and a
real child engine process (`sam2refine serve` with the random-init tiny checkpoint at 256 px)
that the Logic talks to as it does in Slicer's local mode."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "SAM2Refine"
if str(MODULE_DIR) not in sys.path:  # as Slicer puts a scripted module's folder on the path
    sys.path.insert(0, str(MODULE_DIR))


@dataclass
class SlicerCore:
    """The scene and the logics a module's Logic expects to find."""

    scene: object
    app_logic: object
    volumes_logic: object
    segmentations_logic: object
    markups_logic: object

    def load_volume(self, path: Path, name: str = "CT"):
        """Load a volume file with Slicer's own reader (as File > Add Data does)."""
        node = self.volumes_logic.AddArchetypeVolume(str(path), name, 0)
        assert node is not None and node.GetImageData() is not None, f"cannot load {path}"
        return node

    def add_volume(self, voxels_kji: np.ndarray, ijk_to_ras: np.ndarray, name: str):
        """A scalar volume node from an array and its IJK -> RAS matrix."""
        import vtk
        from vtk.util import numpy_support

        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(ijk_to_ras[r, c]))
        node.SetIJKToRASMatrix(matrix)
        image = vtk.vtkImageData()
        image.SetDimensions(*voxels_kji.shape[::-1])
        data = numpy_support.numpy_to_vtk(np.ascontiguousarray(voxels_kji).ravel(), deep=True)
        image.GetPointData().SetScalars(data)
        node.SetAndObserveImageData(image)
        node.CreateDefaultDisplayNodes()
        return node


def _wire() -> SlicerCore:
    import slicer

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    colors = app_logic.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    app_logic.SetModuleLogic("Colors", colors)
    logics = {}
    for name, cls in (("Volumes", slicer.vtkSlicerVolumesLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("Markups", slicer.vtkSlicerMarkupsLogic)):
        logic = cls()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
        logics[name] = logic
    slicer.mrmlScene = scene  # what module code finds in Slicer
    return SlicerCore(scene, app_logic, logics["Volumes"], logics["Segmentations"],
                      logics["Markups"])


@pytest.fixture(scope="session")
def slicer_core() -> SlicerCore:
    pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
    return _wire()


@pytest.fixture
def core(slicer_core: SlicerCore) -> SlicerCore:
    """The wired core with an empty scene (default colour nodes kept)."""
    slicer_core.scene.Clear(0)
    return slicer_core


@pytest.fixture(scope="session")
def module(slicer_core):
    """The module file SAM2Refine/SAM2Refine.py, imported as Slicer imports it."""
    import SAM2Refine

    return SAM2Refine


def engine_settings(checkpoint):
    from sam2refine import EngineSettings
    from tests.conftest import TEST_IMAGE_SIZE

    return EngineSettings(checkpoint=str(checkpoint), image_size=TEST_IMAGE_SIZE, device="cpu")


@pytest.fixture(scope="session")
def engine(tiny_checkpoint, tmp_path_factory):
    """One child engine process for the session's tests (each test opens its own sessions
    on it and closes them)."""
    from sam2refine import LocalEngine

    child = LocalEngine(engine_settings(tiny_checkpoint), python=sys.executable,
                        log_path=tmp_path_factory.mktemp("engine") / "engine.log")
    child.start()
    child.wait_ready(timeout=300)
    yield child
    child.stop()


def open_logic(module, scene, engine, volume_node=None):
    """A Logic on `scene` using `engine`, with a session on `volume_node` if given."""
    logic = module.SAM2RefineLogic(scene)
    logic.useEngine(engine)
    if volume_node is not None:
        logic.startSession(volume_node)
    return logic


@pytest.fixture
def start_logic(module, engine):
    """start_logic(scene, volume_node): a Logic with a session on the node (closed after the
    test)."""
    made = []

    def start(scene, volume_node):
        made.append(open_logic(module, scene, engine, volume_node))
        return made[-1]
    yield start
    for logic in made:
        logic.closeSession()
