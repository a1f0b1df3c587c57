"""Explicit bounds on what an input may cost: one place for every limit (README: "Limits").

Small inputs must not buy unbounded work: a YAML file full of aliases, a template that renders a
gigabyte, a seed count of a hundred million, a PNG with a 10 MB text chunk. Each limit is far above
what a real experiment or image needs; crossing one is a one-line error naming the file and field.
"""

from __future__ import annotations

# Experiment files (tracker/experiment/yamlfile.py, tracker/experiment/parse.py)
YAML_MAX_BYTES = 1_000_000  # an experiment file larger than this is refused before parsing
YAML_MAX_DEPTH = 64  # nesting of mappings and lists
YAML_MAX_NODES = 200_000  # values after expanding aliases (a "billion laughs" file expands to 10**9)
MAX_SEEDS = 1_000_000  # seeds in one experiment, whatever form (list, "A-B", {start, count})
MAX_NAME_LENGTH = 100  # experiment names become folder names (most file systems allow 255 bytes)

# Prompt sets (tracker/experiment/promptset.py): ``prompts: {file: ...}``
PROMPT_SET_MAX_BYTES = 50_000_000  # one prompt file (PartiPrompts' TSV is ~200 KB)
PROMPT_SET_MAX_ROWS = 100_000  # rows read from it (the plan limit then bounds the runs)

# Prompt templates (tracker/prompts/sandbox.py)
MAX_PROMPT_CHARS = 20_000  # a rendered prompt (CLIP reads 77 tokens; long-prompt tools a few hundred)
MAX_RENDER_SECONDS = 2.0  # one template render
MAX_LOOP_ITERATIONS = 1_000_000  # range() iterations in one render, all loops together
MAX_TEMPLATE_RENDERINGS = 1_000_000  # combinations of its axes a template is rendered with to find its variants

# Dynamic Prompts variants and wildcards (tracker/prompts/variants.py)
MAX_VARIANTS = 10_000  # expansions of one template: every combination, or variants: {sample: N} (the plan limit)
MAX_WILDCARD_ENTRIES = 100_000  # files and folders visited in a wildcards folder (links inside it included)
MAX_WILDCARD_DEPTH = 16  # folders nested in a wildcards folder
MAX_WILDCARD_FILE_BYTES = 10_000_000  # one wildcard file (.txt, .json, .yaml)

# Worker processes (tracker/sweep/pool.py): ``--workers N`` starts at most min(N, MAX_WORKERS, the plan's runs,
# the CUDA devices or else the CPU cores); each worker imports torch and loads the model (~1-2 GB of memory)
MAX_WORKERS = 64

# PNG metadata and images (tracker/images/pngmeta.py, tracker/reproduce/regenerate.py)
MAX_TEXT_CHUNK_BYTES = 262_144  # one PNG text chunk, decompressed (a recipe is a few KB)
MAX_IMAGE_PIXELS = 16_777_216  # 4096 x 4096: images opened or generated from a PNG's recipe
MAX_REPRODUCE_STEPS = 1_000  # steps a PNG may ask for; more only with --steps on the command line

# Input images of image-conditioned runs (tracker/experiment/inputs.py): ``image``, ``mask_image``, ``control_image``,
# ``ip_adapter_image``; each is read once when the experiment is parsed, so these bound what a file can make it read
MAX_INPUT_IMAGE_BYTES = 50_000_000  # one input image file (a 4096x4096 RGBA PNG is at most ~64 MB uncompressed)
MAX_INPUT_IMAGE_PIXELS = 16_777_216  # 4096 x 4096, checked from the header before the pixels are decoded
MAX_INPUT_IMAGES = 64  # different input images in one experiment (all fields and axes together)
