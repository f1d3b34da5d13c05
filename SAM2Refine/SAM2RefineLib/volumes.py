"""MRML volume nodes <-> the engine's `Volume`, and RAS <-> IJK geometry.

Slicer volume nodes place voxels in RAS (their IJKToRAS matrix); the engine's `Volume` keeps
DICOM/ITK conventions (LPS origin and direction). Both describe the same grid: the voxel
array [k, j, i] is shared as is, only the x and y axes of the geometry change sign.
Points in a node's *world* frame (markups are placed in world RAS) are brought into the
volume's own RAS frame by undoing the volume's parent transforms (linear ones only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sam2refine import Volume

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


class GeometryError(ValueError):
    """A node's geometry cannot be used (non-linear transform, missing image data, ...)."""


def ijk_to_ras(volume_node) -> np.ndarray:
    """The node's 4x4 IJK -> RAS matrix (in the volume's own, untransformed frame)."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def matrix_to_vtk(array: np.ndarray):
    """A vtkMatrix4x4 with the values of a 4x4 array."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def volume_from_node(volume_node) -> Volume:
    """The engine `Volume` of a scalar volume node: voxels copied, geometry in LPS."""
    from vtk.util import numpy_support

    if volume_node is None or volume_node.GetImageData() is None:
        raise GeometryError("Select an input volume that has image data.")
    image = volume_node.GetImageData()
    if image.GetNumberOfScalarComponents() != 1:
        raise GeometryError(
            f"'{volume_node.GetName()}' has {image.GetNumberOfScalarComponents()} components "
            "per voxel (colour or vector image); SAM2Refine needs a scalar CT or MR volume."
        )
    dims_ijk = image.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    voxels = np.array(scalars.reshape(dims_ijk[::-1]), copy=True)
    return volume_from_array(voxels, ijk_to_ras(volume_node))


def volume_from_array(voxels_kji: np.ndarray, ijk_to_ras_matrix: np.ndarray) -> Volume:
    """An engine `Volume` from a [k, j, i] array and a 4x4 IJK -> RAS matrix."""
    from sam2refine import Volume

    ijk_to_lps = _LPS_FROM_RAS @ np.asarray(ijk_to_ras_matrix, dtype=np.float64)[:3, :]
    spacing = np.linalg.norm(ijk_to_lps[:, :3], axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(ijk_to_lps)):
        raise GeometryError("The volume's IJK to RAS matrix is singular or not finite.")
    return Volume(voxels_kji, tuple(spacing), tuple(ijk_to_lps[:, 3]),
                  ijk_to_lps[:, :3] / spacing)


def ras_matrix_of(volume: Volume) -> np.ndarray:
    """The 4x4 IJK -> RAS matrix of an engine `Volume` (inverse of `volume_from_array`)."""
    matrix = np.eye(4)
    matrix[:3, :3] = _LPS_FROM_RAS @ (volume.direction * np.asarray(volume.spacing)[None, :])
    matrix[:3, 3] = _LPS_FROM_RAS @ np.asarray(volume.origin)
    return matrix


def _world_to_node_matrix(node) -> np.ndarray:
    """4x4 matrix from world RAS to `node`'s own frame (identity when not transformed)."""
    import slicer
    import vtk

    parent = node.GetParentTransformNode() if node is not None else None
    if parent is None:
        return np.eye(4)
    matrix = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(None, parent, matrix):
        raise GeometryError(
            f"'{node.GetName()}' is under a non-linear transform; harden or remove it first."
        )
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def world_to_node(node, points_ras: np.ndarray) -> np.ndarray:
    """World RAS points (n, 3) -> the same points in `node`'s own (untransformed) RAS."""
    points = np.atleast_2d(np.asarray(points_ras, dtype=np.float64))
    matrix = _world_to_node_matrix(node)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def node_to_world(node, points_ras: np.ndarray) -> np.ndarray:
    """Inverse of `world_to_node`."""
    points = np.atleast_2d(np.asarray(points_ras, dtype=np.float64))
    matrix = np.linalg.inv(_world_to_node_matrix(node))
    return points @ matrix[:3, :3].T + matrix[:3, 3]
