"""`python -m yuneta` is the `yuneta` command."""

import sys

from yuneta.cli import main

sys.exit(main())
