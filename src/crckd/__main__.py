"""`python -m crckd` is the same as the `crckd` command."""

import sys

from crckd.cli import main

sys.exit(main())
