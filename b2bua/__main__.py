"""``python -m b2bua`` = the ``b2bua`` command."""

from b2bua.cli import main

raise SystemExit(main())
