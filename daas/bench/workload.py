"""The benchmarks' images: scikit-image's photos re-encoded in the formats and sizes people
upload, and the photos as shipped that every runtime must label alike."""
from __future__ import annotations

import io
from pathlib import Path


File = tuple[str, bytes]  # (file name, encoded image)

# (photo bundled with scikit-image, format to re-encode it in, longest side in px or None = as is)
IMAGE_SPECS: list[tuple[str, str, int | None]] = [
    ("coffee.png", "JPEG", None),
    ("chelsea.png", "JPEG", 3000),  # upscaled: a phone-camera-sized JPEG
    ("astronaut.png", "PNG", None),
    ("rocket.jpg", "WEBP", None),
    ("hubble_deep_field.jpg", "JPEG", None),
    ("retina.jpg", "TIFF", None),
    ("motorcycle_left.png", "JPEG", 2000),
    ("camera.png", "BMP", None),    # greyscale
    ("coins.png", "GIF", None),
    ("logo.png", "PNG", None),      # transparent
    ("ihc.png", "WEBP", None),
    ("coffee.png", "GIF", None),
    ("astronaut.png", "JPEG", 3000),
    ("chelsea.png", "BMP", None),
    ("rocket.jpg", "PNG", 1280),
    ("moon.png", "TIFF", None),
    ("motorcycle_left.png", "WEBP", 1200),
    ("horse.png", "PNG", None),
    ("no_time_for_that_tiny.gif", "GIF", None),  # animated, 14×25
    ("coffee.png", "JPEG", 160),
]
# scikit-image's own photos, as shipped: with the images above, what the runtimes must agree on
# (tests/test_runtimes.py, and on a GPU `bench gpu`)
SAMPLE_PHOTOS = ("coffee.png", "chelsea.png", "camera.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
                 "hubble_deep_field.jpg", "horse.png", "ihc.png", "coins.png", "moon.png", "page.png")
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


def encode(source: Path, fmt: str, longest: int | None) -> File:
    """One photo re-encoded with Pillow (resized with Lanczos when `longest` is given)."""
    from PIL import Image

    image = Image.open(source)
    if fmt == image.format and longest is None:
        return f"{source.stem}-{image.width}x{image.height}.{EXTENSIONS[fmt]}", source.read_bytes()
    image.load()
    if longest:
        scale = longest / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    if fmt in ("JPEG", "BMP") and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    if fmt == "GIF" and image.mode == "RGB":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    options = {"JPEG": {"quality": 90}, "WEBP": {"quality": 85}, "TIFF": {"compression": "tiff_deflate"}}
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options.get(fmt, {}))
    return f"{source.stem}-{image.width}x{image.height}.{EXTENSIONS[fmt]}", buffer.getvalue()


def build_images(folder: Path) -> list[File]:
    """The distinct test images, also written to `folder` (the baseline reads them from disk)."""
    import skimage

    photos = Path(skimage.__file__).parent / "data"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (name, fmt, longest) in enumerate(IMAGE_SPECS):
        file_name, data = encode(photos / name, fmt, longest)
        file_name = f"{i:02d}-{file_name}"
        (folder / file_name).write_bytes(data)
        files.append((file_name, data))
    return files


def cycle(files: list, count: int) -> list:
    return [files[i % len(files)] for i in range(count)]
