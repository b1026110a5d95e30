"""``python -m cascadevsr`` (also what ``torchrun -m cascadevsr`` runs)."""

import sys

from cascadevsr.cli import main

sys.exit(main())
