"""Curating an experiment's versions: tags, references, notes, gc, export and import.

Torch-free. The CLI verbs (``versionkit tag``, ``gc``, ``export`` ...) are thin layers
over these modules:

- :mod:`versionkit.curate.refs`: tag names, ``ROOT@TAG|@latest|@best|@N`` references.
- :mod:`versionkit.curate.gc`: checkpoint retention and removal of failed versions.
- :mod:`versionkit.curate.archive`: one version as a ``.tar.gz``, and its safe import.
"""

from __future__ import annotations
