"""`python -m sam2refine ...` runs the command line (also under torchrun)."""

import sys

from sam2refine.cli.main import main

sys.exit(main())
