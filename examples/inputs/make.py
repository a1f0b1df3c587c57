"""Draw the input images of examples/img2img.yaml (nothing copied from anywhere): a red circle on white, 32x32 px
like the built-in shapes model's images, and a mask whose white right half is repainted.

    python examples/inputs/make.py      # writes circle.png and right-half.png beside this file
"""

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent

image = Image.new("RGB", (32, 32), "white")
ImageDraw.Draw(image).ellipse((6, 6, 25, 25), fill=(220, 30, 30))
image.save(HERE / "circle.png", optimize=True)

mask = Image.new("L", (32, 32), 0)
ImageDraw.Draw(mask).rectangle((16, 0, 31, 31), fill=255)
mask.save(HERE / "right-half.png", optimize=True)
