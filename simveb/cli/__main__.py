"""`python -m simveb.cli`: the same as the `simveb` command."""

import sys

from simveb.cli import main

sys.exit(main())
