"""Helpers of the SAM2Refine Slicer module's Logic: MRML <-> engine conversion, segment
updates, prompts from markups, undo, dependencies, weights and background jobs.

Nothing here imports torch or Qt at import time, so the module loads in a fresh Slicer (and
in `slicer-core` without Qt); the engine (`sam2refine`) is imported only when it is used.
"""
