"""The markups nodes that hold each segment's prompts, and the two clicks that place a box.

Every segment gets its own point lists ("<segment> +" for clicks on it, "<segment> -" for
clicks off it, drawn as crosses) and one ROI per box prompt ("<segment> box"), coloured like
the segment and shown only while it is: clicks of different segments never pile up together.
Nodes are tagged with their segmentation, segment and role, so they are found again after the
scene is saved and loaded. MRML only.
"""

from __future__ import annotations

import numpy as np

ROLE = "SAM2Refine.Role"  # include | exclude | box
SEGMENT = "SAM2Refine.SegmentID"
SEGMENTATION = "SAM2Refine.SegmentationID"
ROLES = ("include", "exclude", "box")
_SUFFIX = {"include": "+", "exclude": "-", "box": "box"}


def _tagged(scene, segmentation_node, segment_id=None, role=None) -> list:
    found = []
    for class_name in ("vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsROINode"):
        nodes = scene.GetNodesByClass(class_name)
        for index in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(index)
            if (node.GetAttribute(SEGMENTATION) == segmentation_node.GetID()
                    and (segment_id is None or node.GetAttribute(SEGMENT) == segment_id)
                    and (role is None or node.GetAttribute(ROLE) == role)):
                found.append(node)
    return found


def prompt_nodes(scene, segmentation_node, segment_id=None, role=None) -> list:
    """The prompt nodes of a segmentation (of one segment, of one role)."""
    return _tagged(scene, segmentation_node, segment_id, role)


def _new(scene, class_name, segmentation_node, segment_id, role):
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    node = scene.AddNewNodeByClass(class_name, f"{segment.GetName()} {_SUFFIX[role]}")
    node.SetAttribute(SEGMENTATION, segmentation_node.GetID())
    node.SetAttribute(SEGMENT, segment_id)
    node.SetAttribute(ROLE, role)
    node.CreateDefaultDisplayNodes()
    node.SetAndObserveTransformNodeID(segmentation_node.GetTransformNodeID())
    style(node, segment.GetColor(), role)
    return node


def point_nodes(scene, segmentation_node, segment_id) -> tuple:
    """(include, exclude) point lists of a segment, made on first use."""
    nodes = []
    for role in ("include", "exclude"):
        found = _tagged(scene, segmentation_node, segment_id, role)
        nodes.append(found[0] if found else _new(scene, "vtkMRMLMarkupsFiducialNode",
                                                 segmentation_node, segment_id, role))
    return tuple(nodes)


def new_box_node(scene, segmentation_node, segment_id):
    """A new, empty ROI for one box prompt of a segment."""
    return _new(scene, "vtkMRMLMarkupsROINode", segmentation_node, segment_id, "box")


def style(node, color, role: str) -> None:
    """Colour like the segment; clicks off it are crosses, clicks on it filled dots."""
    display = node.GetDisplayNode()
    if display is None:
        return
    rgb = [float(c) for c in color]
    display.SetSelectedColor(*rgb)
    display.SetColor(*rgb)
    if role == "exclude":
        display.SetGlyphType(display.Cross2D)
    elif role == "include":
        display.SetGlyphType(display.Sphere3D)
    display.SetPointLabelsVisibility(False)


def sync(scene, segmentation_node) -> None:
    """Prompt nodes follow their segment: its colour, its name, its visibility; nodes of
    segments that no longer exist are removed."""
    if scene.GetNodeByID(segmentation_node.GetID() or "") is not segmentation_node:
        return  # a node of a closed scene (its ID may belong to a new node by now)
    segmentation = segmentation_node.GetSegmentation()
    display = segmentation_node.GetDisplayNode()
    shown = display is None or display.GetVisibility()
    for node in _tagged(scene, segmentation_node):
        segment_id = node.GetAttribute(SEGMENT)
        segment = segmentation.GetSegment(segment_id)
        if segment is None:
            scene.RemoveNode(node)
            continue
        role = node.GetAttribute(ROLE)
        name = f"{segment.GetName()} {_SUFFIX.get(role, role)}"
        if node.GetName() != name:
            node.SetName(name)
        node_display = node.GetDisplayNode()
        if node_display is None:
            continue
        if tuple(node_display.GetSelectedColor()) != tuple(segment.GetColor()):
            style(node, segment.GetColor(), role)
        visible = bool(shown and (display is None or display.GetSegmentVisibility(segment_id)))
        if bool(node_display.GetVisibility()) != visible:
            node_display.SetVisibility(visible)


class BoxPlacement:
    """Watches an ROI being placed with two clicks and calls `on_complete(roi)` once both are
    in and the box has a size.

    Slicer defines a box ROI by two control points (the second one follows the mouse until
    clicked), then replaces them by its centre and pads a flat box to the size of its shorter
    side, so a box drawn on one slice would span several. The first click is kept; along the
    axes where the two clicks did not differ the ROI is made flat again, so what is shown and
    sent is the box that was drawn (a box drawn across slices stays 3D). The ROI's state, not
    the order of its events, says where placement is."""

    def __init__(self, roi, on_complete) -> None:
        import vtk

        self.roi = roi
        self.on_complete = on_complete
        self.first: np.ndarray | None = None
        self.done = False
        self._tags = [roi.AddObserver(event, lambda caller, event_id: self._check())
                      for event in (roi.PointPositionDefinedEvent, roi.PointModifiedEvent,
                                    vtk.vtkCommand.ModifiedEvent)]

    def _check(self) -> None:
        roi = self.roi
        if self.done or roi.GetNumberOfControlPoints() == 0:
            return
        if roi.GetRequiredNumberOfControlPoints() > 1:  # still placing the two corners
            for n in range(roi.GetNumberOfControlPoints()):
                if roi.GetNthControlPointPositionStatus(n) == roi.PositionDefined:
                    position = np.zeros(3)
                    roi.GetNthControlPointPosition(n, position)
                    self.first = position
                    return
            return
        size = np.asarray(roi.GetSize(), dtype=float)
        if not size.any():
            return
        if self.first is not None:
            centre = np.asarray(roi.GetCenter(), dtype=float)
            matrix = roi.GetObjectToNodeMatrix()
            axes = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
            drawn = np.abs(axes.T @ (2.0 * (centre - self.first)))  # along the ROI's axes
            flat = drawn < 1e-6 * max(1.0, float(size.max()))
            if flat.any() and not flat.all():
                size[flat] = 0.0
        self.done = True
        self.stop()
        if self.first is not None:
            roi.SetSize(*[float(v) for v in size])
        self.on_complete(roi)

    def stop(self) -> None:
        for tag in self._tags:
            self.roi.RemoveObserver(tag)
        self._tags = []
