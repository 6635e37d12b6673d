"""``python -m versionkit ...`` is the ``versionkit`` command."""

from versionkit.cli import main

raise SystemExit(main())
