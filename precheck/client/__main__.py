"""`python -m precheck.client`: the same as the `precheck` console script."""

from precheck.client.cli import main

raise SystemExit(main())
