"""Stand-ins for Slicer's Qt-based scripted-module base classes, used when the module is
imported outside the Slicer application (e.g. with the `slicer-core` wheel, which has MRML
and the logics but no Qt): then the Logic works and the Widget is unavailable."""

from __future__ import annotations

import unittest


def tr(text: str) -> str:
    """Untranslated text (Slicer's `slicer.i18n.tr` translates it in the application)."""
    return text


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        raise RuntimeError("The SAM2Refine widget needs the Slicer application (Qt).")


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, msec: int = 0) -> None:  # noqa: N802 (Slicer's API)
        print(message)
