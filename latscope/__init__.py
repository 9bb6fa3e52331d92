"""LatScope: the collector, the analyzer, the lab and their command line.

Shared protocols, schemas and maths live in the collection's
``plugins/module_utils`` and are imported from there (see docs/architecture.md).
"""

__version__ = "0.1.0"
