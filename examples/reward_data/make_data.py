"""Write the tiny example data set for `splatvlm train-reward` beside this script.

Four 64x64 PNGs (two views of a red ball, two of a blue box, drawn with PIL) and data.jsonl with three
labeled view sets and one preference pair. It shows the format, not a useful adapter: train on your own
renders for that. Try it offline with the demo reward model:

    python examples/reward_data/make_data.py
    splatvlm train-reward examples/reward_data/data.jsonl -o my_adapter --vlm.model demo --steps 20
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIZE = 64


def red_ball(view: int) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), "white")
    shift = 6 * view  # a second view from a little to the side
    ImageDraw.Draw(img).ellipse([12 + shift, 12, 52 + shift - 6, 52], fill=(210, 40, 35))
    return img


def blue_box(view: int) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([14, 18, 46, 50], fill=(40, 70, 200))
    if view:  # the side face, darker
        d.polygon([(46, 18), (54, 12), (54, 44), (46, 50)], fill=(25, 45, 140))
    return img


def main(folder: Path = HERE) -> None:
    names = {}
    for draw, stem in ((red_ball, "red_ball"), (blue_box, "blue_box")):
        names[stem] = []
        for view in range(2):
            name = f"{stem}_{view}.png"
            draw(view).save(folder / name)
            names[stem].append(name)
    records = [
        {"images": names["red_ball"], "prompt": "a red ball", "label": "yes"},
        {"images": names["blue_box"], "prompt": "a red ball", "label": "no"},
        {"images": names["blue_box"], "prompt": "a blue box", "label": "yes"},
        {"images_chosen": names["red_ball"], "images_rejected": names["blue_box"], "prompt": "a red ball"},
    ]
    text = "".join(json.dumps(r) + "\n" for r in records)
    (folder / "data.jsonl").write_text(text, encoding="utf-8")
    print(f"wrote {folder / 'data.jsonl'} and {sum(len(v) for v in names.values())} images")


if __name__ == "__main__":
    main()
