"""The package's version, in a leaf module: the CLI, the plan's recipes and the sweep's record read it here."""

__version__ = "0.1.0"
