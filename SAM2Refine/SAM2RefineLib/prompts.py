"""Prompts from markups nodes, and generated boxes shown as ROI nodes.

Point prompts come from fiducial (point list) nodes: every control point is a click, positive
in a segment's "+" node and negative in its "-" node (`promptnodes`). Box prompts come from ROI
nodes: the ROI's extent, clipped to the volume, on the slice through its centre; an ROI that
spans several slices also gives the range its segment's propagation is limited to.
Control points are read in world RAS, brought into the volume's own RAS frame (what the
session's coords="ras" means) and, for clicks, onto the session's slices (coords="slice"), so
the Logic knows which slice each click prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from SAM2RefineLib.volumes import matrix_to_vtk, ras_matrix_of, world_to_node


@dataclass
class PointGroup:
    """Clicks on one slice: (frame, row, col) positions on the session's slices, 1/0 labels."""

    frame: int
    points_frc: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    point_ids: list[tuple[str, str]] = field(default_factory=list)  # (node ID, point ID)


def mark_sent(markups_node, point_ids: list[str]) -> None:
    """Lock the control points that were sent: they are not sent twice, and a sent click
    cannot be dragged away from what it prompted (the flag is saved with the scene)."""
    for point_id in point_ids:
        index = markups_node.GetNthControlPointIndexByID(point_id)
        if index >= 0:
            markups_node.SetNthControlPointLocked(index, True)


def new_control_points(markups_node, only_new: bool = True) -> list[tuple[str, np.ndarray]]:
    """(point ID, world RAS position) of the node's placed control points not yet sent."""
    if markups_node is None:
        return []
    out = []
    for n in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(n) != markups_node.PositionDefined:
            continue  # still being placed
        if only_new and markups_node.GetNthControlPointLocked(n):
            continue
        position = np.zeros(3)
        markups_node.GetNthControlPointPositionWorld(n, position)
        out.append((markups_node.GetNthControlPointID(n), position))
    return out


def group_points(volume_node, volume, stack, positive_node=None, negative_node=None,
                 only_new: bool = True) -> list[PointGroup]:
    """Clicks of the positive and negative nodes grouped by the slice they fall on."""
    groups: dict[int, PointGroup] = {}
    for node, label in ((positive_node, 1), (negative_node, 0)):
        points = new_control_points(node, only_new)
        if not points:
            continue
        ras = world_to_node(volume_node, np.array([p for _, p in points]))
        frc = stack.ijk_to_frc(volume.ras_to_index(ras))
        for (point_id, _), position in zip(points, frc):
            frame = int(np.rint(position[0]))
            group = groups.setdefault(frame, PointGroup(frame))
            group.points_frc.append([float(v) for v in position])
            group.labels.append(label)
            group.point_ids.append((node.GetID(), point_id))
    return [groups[f] for f in sorted(groups)]


def roi_voxels(volume_node, volume, roi_node) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest (i, j, k) of the voxels whose centres lie inside an ROI,
    clipped to the volume; an ROI thinner than a voxel along an axis gets its nearest voxel."""
    if roi_node is None or roi_node.GetNumberOfControlPoints() == 0:
        raise ValueError("Place the box (ROI) on the image first.")
    ijk = volume.ras_to_index(world_to_node(volume_node, roi_corners_world(roi_node)))
    size = np.array(volume.shape_ijk, dtype=float) - 1
    edge_low, edge_high = ijk.min(0), ijk.max(0)
    if np.any(edge_high < -0.5) or np.any(edge_low > size + 0.5):
        raise ValueError(f"The ROI '{roi_node.GetName()}' lies outside the volume.")
    low, high = np.ceil(edge_low - 1e-6), np.floor(edge_high + 1e-6)
    thin = low > high  # thinner than a voxel along that axis: its nearest voxel
    low[thin] = high[thin] = np.rint((edge_low[thin] + edge_high[thin]) / 2)
    return np.clip(low, 0, size), np.clip(high, 0, size)


def roi_box(volume_node, volume, stack, roi_node, frame: int | None = None
            ) -> tuple[list[float], list[float], int]:
    """Two opposite RAS corners (volume frame) of the voxels inside an ROI, and the slice to
    use: `frame`, or the one through its centre (the box on it is the ROI's in-plane extent)."""
    low, high = roi_voxels(volume_node, volume, roi_node)
    if frame is None:
        centre = stack.ijk_to_frc((low + high) / 2.0)[0]
        frame = int(np.clip(np.rint(centre), 0, stack.num_frames - 1))
    corner_a, corner_b = volume.index_to_ras(np.stack([low, high]))
    return [float(v) for v in corner_a], [float(v) for v in corner_b], int(frame)


def roi_frames(volume_node, volume, stack, roi_node) -> tuple[int, int]:
    """The first and last slice (of the session's stack) an ROI spans: equal for a box drawn
    on one slice; a 3D box's range limits its segment's propagation."""
    low, high = roi_voxels(volume_node, volume, roi_node)
    frames = np.rint(stack.ijk_to_frc(np.stack([low, high]))[:, 0]).astype(int)
    return int(frames.min()), int(frames.max())


def roi_corners_world(roi_node) -> np.ndarray:
    """The 8 corners of an ROI (rotated ROIs included) in world RAS, (8, 3)."""
    half = np.asarray(roi_node.GetSize(), dtype=float) / 2.0
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    object_points = signs * half
    matrix = roi_node.GetObjectToWorldMatrix()
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return object_points @ m[:3, :3].T + m[:3, 3]


def box_to_roi(scene, volume_node, volume, stack, frame: int, box_rc: tuple[int, int, int, int],
               name: str, roi_node=None):
    """Show a box (r0, c0, r1, c1 on `frame`) as a one-slice-thick ROI aligned with the volume
    (under the volume's parent transform, so it stays on the image)."""
    r0, c0, r1, c1 = box_rc
    ijk = stack.frc_to_ijk(np.array([[frame, r0, c0], [frame, r1, c1]], dtype=float))
    low, high = ijk.min(0) - 0.5, ijk.max(0) + 0.5
    ijk_to_ras = ras_matrix_of(volume)
    axes = ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    centre = axes @ ((low + high) / 2.0) + ijk_to_ras[:3, 3]
    if roi_node is None:
        roi_node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    roi_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    rotation = np.eye(4)
    rotation[:3, :3] = axes / spacing
    roi_node.GetObjectToNodeMatrix().DeepCopy(matrix_to_vtk(rotation))
    roi_node.SetCenter(*[float(v) for v in centre])
    roi_node.SetSize(*[float(v) for v in (high - low) * spacing])
    return roi_node


def box_of_mask(mask2d: np.ndarray) -> tuple[int, int, int, int] | None:
    """(r0, c0, r1, c1) bounding box of a 2D mask; None when it is empty."""
    rows, cols = np.nonzero(np.asarray(mask2d))
    if rows.size == 0:
        return None
    return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())
