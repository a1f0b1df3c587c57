"""Draw the input images of examples/img2img.yaml (nothing copied from anywhere): a red circle on white, 32x32 px
like the built-in shapes model's images, and a mask whose white right half is repainted; and the control image of
examples/controlnet-scales.yaml: a house's outlines, white on black, as an edge detector (Canny) draws them.

    python examples/inputs/make.py      # writes circle.png, right-half.png and house-edges.png beside this file
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

edges = Image.new("L", (512, 512), 0)
draw = ImageDraw.Draw(edges)
draw.rectangle((128, 240, 384, 448), outline=255, width=3)  # the front
draw.polygon([(112, 240), (256, 112), (400, 240)], outline=255, width=3)  # the roof
draw.rectangle((224, 336, 288, 448), outline=255, width=3)  # the door
draw.rectangle((160, 280, 208, 320), outline=255, width=3)  # two windows
draw.rectangle((304, 280, 352, 320), outline=255, width=3)
edges.convert("RGB").save(HERE / "house-edges.png", optimize=True)
