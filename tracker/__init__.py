"""prompt-tracker: a prompt-engineering experiment tracker for diffusers pipelines."""

__version__ = "0.1.0"
