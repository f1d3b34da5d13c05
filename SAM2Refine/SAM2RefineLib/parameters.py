"""The module's settings in the scene (its parameter node), so a saved scene comes back as it
was: the model, device, image size, axis, intensity preset, local or remote engine and the
server URL (never the token), the input volume and segmentation, and which session object
each segment is. A mixin of the Logic.
"""

from __future__ import annotations

import json

MODULE_NAME = "SAM2Refine"
SETTINGS = ("Backend", "Model", "ImageSize", "Checkpoint", "Adapters", "Device", "ServerURL",
            "Axis", "Intensity")


class ParameterSteps:
    """Writes the Logic's settings into its parameter node and reads them back."""

    def parameterNode(self):
        """The scene's SAM2Refine parameter node (a singleton, made on first use)."""
        scene = self.scene
        node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)  # the scene keeps the reference
            node.SetSingletonTag(MODULE_NAME)
            node.SetModuleName(MODULE_NAME)
            node.SetName(MODULE_NAME)
            node = scene.AddNode(node)
        return node

    def saveParameters(self) -> None:
        """Write the current settings (called whenever one changes)."""
        if self._scene is None and not _slicerScene():
            return
        node = self.parameterNode()
        link = self.link
        settings = link.settings
        values = {"Backend": link.mode, "Model": settings.model,
                  "ImageSize": str(settings.image_size), "Checkpoint": settings.checkpoint or "",
                  "Adapters": settings.adapters or "", "Device": settings.device,
                  "ServerURL": link.serverUrl, "Axis": self.axis, "Intensity": self.intensity,
                  "ObjectMap": json.dumps(self.objectIds, sort_keys=True),
                  "SegmentRanges": json.dumps({s: list(r) for s, r in
                                               self.segmentRanges.items()}, sort_keys=True)}
        modified = node.StartModify()
        for key, value in values.items():
            if node.GetParameter(key) != value:
                node.SetParameter(key, value)
        for role, inputNode in (("InputVolume", self.volumeNode),
                                ("Segmentation", self.segmentationNode)):
            nodeId = inputNode.GetID() if inputNode is not None else None
            if node.GetNodeReferenceID(role) != nodeId:
                node.SetNodeReferenceID(role, nodeId)
        node.EndModify(modified)

    def restoreParameters(self) -> dict[str, str]:
        """Take the settings of the scene's parameter node (a scene just loaded): the engine
        configuration, the inputs and the segment -> object map. Returns the settings, for the
        widget to show; an empty dict when the scene has none."""
        scene = self.scene
        node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None or not node.GetParameter("Model"):
            return {}
        values = {key: node.GetParameter(key) or "" for key in SETTINGS}
        from sam2refine import EngineSettings

        self._checkIdle()
        self.closeSession()
        if values["Backend"] == "remote":
            self.link.configureRemote(values["ServerURL"], self.link.token)
        else:
            self.link.configureLocal(EngineSettings(
                values["Model"], int(values["ImageSize"] or 512), values["Checkpoint"] or None,
                values["Adapters"] or None, values["Device"] or "auto"), self.link.python)
            self.link.serverUrl = values["ServerURL"]
        self.volumeNode = node.GetNodeReference("InputVolume")
        self.segmentationNode = node.GetNodeReference("Segmentation")
        self.axis, self.intensity = values["Axis"] or "axial", values["Intensity"] or "ct"
        segmentation = (self.segmentationNode.GetSegmentation()
                        if self.segmentationNode is not None else None)

        def exists(segmentId: str) -> bool:
            return segmentation is not None and segmentation.GetSegment(segmentId) is not None
        objects = json.loads(node.GetParameter("ObjectMap") or "{}")
        ranges = json.loads(node.GetParameter("SegmentRanges") or "{}")
        self.objectIds = {s: int(o) for s, o in objects.items() if exists(s)}
        self.segmentRanges = {s: (int(r[0]), int(r[1])) for s, r in ranges.items() if exists(s)}
        self._observeSegmentation()
        return values


def _slicerScene() -> bool:
    try:
        import slicer

        return getattr(slicer, "mrmlScene", None) is not None
    except ImportError:
        return False
