# Copyright 2026 The SC-CLIP for Hugging Face authors. Licensed under the MIT License.
"""
Draw the bundled example image `examples/house_tree_sky.png`: a countryside scene (sky with clouds, a house, a tree,
a road, grass), made procedurally so that the project owns it. Re-running it writes the same pixels.

    python scripts/make_example_image.py [--out examples/house_tree_sky.png]
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


WIDTH, HEIGHT = 480, 360
HORIZON = 215
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "examples" / "house_tree_sky.png"


def vertical_gradient(top: tuple, bottom: tuple, height: int) -> np.ndarray:
    """(height, WIDTH, 3) float image fading from colour `top` to colour `bottom`."""
    weights = np.linspace(0.0, 1.0, height)[:, None, None]
    column = (1 - weights) * np.array(top, float) + weights * np.array(bottom, float)
    return np.repeat(column, WIDTH, axis=1)


def draw_sky_and_ground(rng: np.random.Generator) -> Image.Image:
    sky = vertical_gradient((70, 130, 210), (175, 210, 240), HORIZON)
    ground = vertical_gradient((95, 160, 60), (60, 125, 35), HEIGHT - HORIZON)
    # Grass is never flat: add fine noise, stronger near the viewer.
    ground += rng.normal(0, 1, ground.shape[:2])[..., None] * np.linspace(6, 18, HEIGHT - HORIZON)[:, None, None]
    canvas = np.concatenate([sky, ground]).clip(0, 255).astype(np.uint8)
    return Image.fromarray(canvas)


def draw_clouds(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    layer = Image.new("L", image.size, 0)
    pen = ImageDraw.Draw(layer)
    for center_x, center_y in [(90, 50), (300, 35), (410, 85)]:
        for _ in range(7):
            x = center_x + rng.integers(-35, 36)
            y = center_y + rng.integers(-8, 9)
            radius = rng.integers(14, 26)
            pen.ellipse([x - radius * 1.6, y - radius, x + radius * 1.6, y + radius], fill=235)
    layer = layer.filter(ImageFilter.GaussianBlur(4))
    return Image.composite(Image.new("RGB", image.size, (250, 250, 252)), image, layer)


def draw_road(pen: ImageDraw.ImageDraw):
    pen.polygon([(215, HEIGHT), (345, HEIGHT), (258, HORIZON), (252, HORIZON)], fill=(120, 115, 110))
    for top in range(HORIZON + 12, HEIGHT, 24):  # dashed centre line, longer dashes nearer the viewer
        depth = (top - HORIZON) / (HEIGHT - HORIZON)
        pen.rectangle([254 + 18 * depth, top, 256 + 22 * depth, top + 3 + 12 * depth], fill=(235, 225, 150))


def draw_house(pen: ImageDraw.ImageDraw):
    left, right, wall_top, base = 50, 200, 165, 265
    pen.rectangle([left, wall_top, right, base], fill=(225, 200, 160), outline=(120, 90, 60), width=2)
    pen.polygon([(left - 18, wall_top), ((left + right) // 2, 100), (right + 18, wall_top)], fill=(170, 50, 40))
    pen.rectangle([155, 112, 172, 145], fill=(140, 60, 50))  # chimney
    pen.rectangle([110, 205, 140, base], fill=(110, 70, 40))  # door
    for window_left in (65, 160):
        pen.rectangle(
            [window_left, 185, window_left + 28, 213], fill=(150, 200, 235), outline=(255, 255, 255), width=3
        )
        pen.line([window_left + 14, 185, window_left + 14, 213], fill=(255, 255, 255), width=2)


def draw_tree(pen: ImageDraw.ImageDraw, rng: np.random.Generator):
    pen.rectangle([375, 175, 395, 280], fill=(100, 65, 35))
    for _ in range(60):  # the crown: many overlapping leaf clumps in several greens
        x, y = rng.normal(385, 32), rng.normal(135, 28)
        radius = rng.integers(10, 22)
        green = (int(rng.integers(25, 60)), int(rng.integers(95, 150)), int(rng.integers(25, 55)))
        pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=green)


def make_example_image(seed: int = 0) -> Image.Image:
    """The example scene as an RGB PIL image of WIDTH x HEIGHT pixels."""
    rng = np.random.default_rng(seed)
    image = draw_clouds(draw_sky_and_ground(rng), rng)
    pen = ImageDraw.Draw(image)
    draw_road(pen)
    draw_house(pen)
    draw_tree(pen, rng)
    return image


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Where to write the PNG.")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    make_example_image().save(args.out, optimize=True)
    print(f"Wrote {args.out} ({args.out.stat().st_size // 1024} KB).")


if __name__ == "__main__":
    main()
