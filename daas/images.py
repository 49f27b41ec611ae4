"""Checking and decoding uploaded images (Pillow only, so the web tier never imports torch)."""
from __future__ import annotations

import io

from PIL import Image, ImageFile, UnidentifiedImageError

from daas.config import MB

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Pillow's own bomb guard raises at open time without the image's size; ours checks the size from
# the header (before any pixel is decoded) against DAAS_MAX_IMAGE_PIXELS and says what it found.
Image.MAX_IMAGE_PIXELS = None


class BadImage(ValueError):
    """An upload that cannot be classified; the message is meant for the person who sent it."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _open(data: bytes) -> Image.Image:
    """Open the header only; reject what is not a supported, reasonably sized image."""
    if not data:
        raise BadImage("the file is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise BadImage(f"the file is not an image we can read (supported: {', '.join(FORMATS)})") from None
    return image


def check_upload(data: bytes, max_bytes: int, max_pixels: int) -> tuple[int, int]:
    """Cheap checks at the edge: size, format, pixel count from the header. Returns (width, height)."""
    if len(data) > max_bytes:
        raise BadImage(f"the file is {len(data) / MB:.1f} MB; the limit is {max_bytes / MB:.0f} MB per image", 413)
    image = _open(data)
    _check_pixels(image, max_pixels)
    return image.size


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise BadImage(f"the image is {width}×{height} pixels ({width * height / 1e6:.0f} megapixels); "
                       f"the limit is {max_pixels / 1e6:.0f} megapixels", 413)
    if width == 0 or height == 0:
        raise BadImage("the image has no pixels")


# What workers decode JPEGs down to: twice the model's 256-pixel resize, so quality holds.
WORKER_DRAFT_SIZE = (2 * 256, 2 * 256)


def decode(data: bytes, max_pixels: int, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode fully into 8-bit RGB; truncated or corrupt data raises BadImage.

    `draft_size` lets JPEG decode at a reduced scale (DCT scaling) when the image is far larger
    than the model needs: much cheaper than decoding every pixel and resizing afterwards.
    """
    image = _open(data)
    _check_pixels(image, max_pixels)
    if draft_size and image.format == "JPEG":
        image.draft("RGB", draft_size)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"the image data is damaged or truncated ({exc})") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is flattened onto white, as a viewer would show it."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")  # 16-bit grey to 8-bit
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")
