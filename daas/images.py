"""Checking and decoding uploaded images (Pillow only, so the web tier never imports torch)."""
from __future__ import annotations

import io
from typing import IO

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


class _CountedReads(io.RawIOBase):
    """A file that refuses more than `limit` reads until `limit` is lifted.

    Why: Pillow's JPEG parser reads junk between markers one byte at a time. A 10 MB file of a JPEG
    marker and zeros kept a web thread busy for about 3.6 s before it was found not to be an image;
    with 65,536 reads allowed for the header, about 25 ms. Real headers take a few dozen reads."""

    def __init__(self, stream: IO[bytes], limit: int | None):
        super().__init__()
        self.stream, self.limit = stream, limit

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.limit is not None:
            self.limit -= 1
            if self.limit < 0:
                raise SyntaxError("no image header found")
        return self.stream.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()


HEADER_READS = 65_536


def _open(source: bytes | IO[bytes]) -> Image.Image:
    """Open the header only; reject what is not a supported, reasonably sized image."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    if not stream.seek(0, io.SEEK_END):
        raise BadImage("the file is empty")
    stream.seek(0)
    counted = _CountedReads(stream, HEADER_READS)
    try:
        image = Image.open(counted, formats=FORMATS)
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise BadImage(f"the file is not an image we can read (supported: {', '.join(FORMATS)})") from None
    counted.limit = None  # decoding pixels is not bounded by it
    return image


def check_upload(source: bytes | IO[bytes], max_bytes: int, max_pixels: int) -> tuple[int, int]:
    """Cheap checks at the edge: size, format, pixel count from the header (a file is read no
    further than its header, and left at its start). Returns (width, height)."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    size = stream.seek(0, io.SEEK_END)
    if size > max_bytes:
        raise BadImage(f"the file is {size / MB:.1f} MB; the limit is {max_bytes / MB:.0f} MB per image", 413)
    try:
        image = _open(stream)
        _check_pixels(image, max_pixels)
        return image.size
    finally:
        stream.seek(0)


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

    With `draft_size`, an image far larger than that is made smaller as early as possible: JPEG
    decodes at a reduced scale (DCT scaling), other formats are reduced right after decoding, before
    any conversion copies them (see `shrink`). Both are much cheaper than converting every pixel.
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
    return to_rgb(shrink(image, draft_size) if draft_size else image)


STRIP_PIXELS = 1_000_000  # pixels per strip that `shrink` copies at a time (4 MB in RGBA)


def shrink(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Reduce a decoded image at least twice as large as `size` on both sides by a whole factor
    (box filter), a strip at a time, so that its pixels are never copied at full size.

    Why: the bound on a worker's memory per image. A 49-megapixel RGBA PNG took a worker from 204 to
    812 MB when it was flattened at full size (three full-size copies), and Pillow's own `reduce`
    copies an image with transparency once more (to premultiply it). In strips, the decoded pixels
    are the only full-size buffer: at most 4 bytes per pixel (see README, Bad input).
    """
    factor = min(image.width // size[0], image.height // size[1])
    if factor < 2:
        return image
    mode = _reducible_mode(image)
    width, height = image.width // factor, image.height // factor
    reduced = Image.new(mode, (width, height))
    rows = factor * max(1, STRIP_PIXELS // (image.width * factor))
    for top in range(0, height * factor, rows):
        strip = image.crop((0, top, width * factor, min(top + rows, height * factor)))
        reduced.paste((strip if strip.mode == mode else strip.convert(mode)).reduce(factor), (0, top // factor))
    return reduced


def _reducible_mode(image: Image.Image) -> str:
    """The mode closest to the image's that Image.reduce works on."""
    if image.mode == "P":
        return "RGBA" if "transparency" in image.info else "RGB"
    if image.mode in {"L", "LA", "I", "F", "RGB", "RGBA", "CMYK", "YCbCr"}:
        return image.mode
    return {"1": "L", "I;16": "I", "I;16B": "I", "I;16L": "I", "I;16N": "I", "PA": "RGBA"}.get(image.mode, "RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is flattened onto white, as a viewer would show it."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")  # 16-bit grey to 8-bit
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
