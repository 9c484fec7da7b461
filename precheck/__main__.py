"""`python -m precheck`: the same as `precheck-server`."""

import sys

from precheck.cli import main

sys.exit(main())
