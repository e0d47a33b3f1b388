"""Command-line interface (layer L3): ``sdfm solve``, ``sdfm info``."""
