"""Automatic segmentation: prompt sources, the two SAM 2 refinement stages, the pipeline."""
