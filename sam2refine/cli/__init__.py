"""The `sam2refine` command line, one module per verb family."""
