"""SAM2Refine engine: SAM 2 segmentation of CT/MR volumes, without Slicer."""

__version__ = "0.1.0"
