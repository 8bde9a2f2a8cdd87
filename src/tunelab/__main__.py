"""`python -m tunelab ...`: the form torchrun and `accelerate launch -m tunelab train CONFIG` start."""

import sys

from tunelab.cli import main

sys.exit(main())
