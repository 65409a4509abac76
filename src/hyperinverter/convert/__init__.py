"""Importers and exporters for foreign checkpoint formats (the only place that unpickles anything)."""
