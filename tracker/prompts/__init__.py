"""The prompt language beyond Jinja2: Dynamic Prompts variants and wildcards (``variants``), prompt weighting
through compel (``weighting``) and LoRA adapters (``lora``).

Pure modules except where a docstring says otherwise; the libraries (dynamicprompts, compel, peft) are
imported inside functions so the CLI stays fast.
"""
