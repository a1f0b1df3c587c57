"""Reproducing images: rebuilding a run from a PNG recipe, an A1111 chunk or the store (``regenerate``), what a PNG may decide (``trust``), and ``verify``."""
