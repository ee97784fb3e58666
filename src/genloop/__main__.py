"""`python -m genloop` is the `genloop` command."""

import sys

from genloop.cli import main

sys.exit(main())
