"""Reading user images for the CLI: JPEG and PNG to (H, W, 3) uint8 RGB, or a clear InputError."""

import logging
from pathlib import Path

import numpy as np

from bodyrt.errors import InputError

MAX_PIXELS = 100_000_000


def load_image(path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB, upright.

    The EXIF orientation tag is applied (a phone photo tagged "rotate 90" comes out as it is shown),
    so boxes are in the coordinates of the image as displayed. Grayscale and palette images are
    expanded to RGB, RGBA and LA lose their alpha channel, 16-bit images are scaled to 8 bits.
    Anything else (CMYK JPEGs aside, which are converted) is rejected. A PNG whose chunk checksums do
    not match is refused rather than decoded into wrong pixels. JPEG carries no checksum, and Pillow
    decodes garbled entropy-coded data into wrong pixels without a word; with the `strict-jpeg` extra
    installed, every JPEG is also decoded by libjpeg-turbo with its warnings turned into errors
    (see check_jpeg_data).
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise InputError(f"{path}: not a regular file (a folder, pipe or device); give a JPEG or PNG file")
    try:
        return _decode(lambda: path, path, max_pixels)
    except FileNotFoundError:
        raise InputError(f"{path}: no such image file") from None


def decode_image(data: bytes, name: str = "uploaded image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode JPEG or PNG bytes (an HTTP upload) to (H, W, 3) uint8 RGB, upright.

    The same checks as load_image: EXIF orientation applied, PNG checksums verified, the pixel count
    checked from the header before decoding. `name` is how error messages refer to the bytes.
    """
    import io

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"{name}: expected image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise InputError(f"{name}: empty; give JPEG or PNG bytes")
    return _decode(lambda: io.BytesIO(data), name, max_pixels)


def _decode(open_source, name, max_pixels: int) -> np.ndarray:
    """Decode what open_source() returns (a path or a fresh byte stream); errors name `name`."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns past 89 Mpx and raises past 179 Mpx; bodyrt's own limit (checked from the
            # header, before decoding) is the one the user sees.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(open_source()) as image:
                if image.format not in ("JPEG", "PNG"):
                    raise InputError(f"{name}: unsupported image format {image.format}; give a JPEG or PNG file")
                if image.width * image.height > max_pixels:
                    raise InputError(f"{name}: image of {image.width}x{image.height} pixels is too large "
                                     f"(at most {_millions(max_pixels)} million pixels)")
                if image.format == "PNG":
                    image.verify()  # every chunk's CRC; the file must be opened again to decode it
                if image.format == "JPEG":
                    source = open_source()
                    check_jpeg_data(source.read_bytes() if isinstance(source, Path) else source.getvalue(), name)
            with Image.open(open_source()) as image:
                image.load()
                upright = ImageOps.exif_transpose(image)
                return _to_rgb8(upright, name)
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"{name}: image is too large (over {_millions(max_pixels)} million pixels)") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not a readable image (neither JPEG nor PNG data)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputError(f"{name}: not a readable image ({error})") from None


_warned_unchecked_jpeg = False


def check_jpeg_data(data: bytes, name) -> None:
    """Decode the JPEG with libjpeg-turbo's warnings as errors ("Corrupt JPEG data: N extraneous bytes",
    "premature end of data segment", bad Huffman codes): InputError naming `name` if there is one.

    Needs the `strict-jpeg` extra (simplejpeg); without it, one warning per process says JPEGs go
    unchecked."""
    global _warned_unchecked_jpeg
    try:
        import simplejpeg
    except ImportError:
        if not _warned_unchecked_jpeg:
            _warned_unchecked_jpeg = True
            logging.getLogger("bodyrt").warning(
                "JPEG files are decoded without a corruption check (garbled data gives wrong pixels "
                "silently); install the check with: pip install \".[strict-jpeg]\"")
        return
    try:
        colorspace = simplejpeg.decode_jpeg_header(data)[2]
        target = "CMYK" if colorspace in ("CMYK", "YCCK") else "GRAY" if colorspace == "Gray" else "RGB"
        simplejpeg.decode_jpeg(data, colorspace=target, strict=True)
    except ValueError as error:
        raise InputError(f"{name}: corrupted JPEG data ({str(error).strip() or 'decoder error'}); "
                         "the file is damaged") from None


def _millions(pixels: int) -> str:
    return f"{pixels / 1_000_000:g}"


def _to_rgb8(image, path) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        maximum = 65535.0 if values.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        gray = np.clip(np.rint(values * (255.0 / maximum)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise InputError(f"{path}: floating-point images are not supported; save it as 8- or 16-bit")
    if image.mode not in ("RGB", "L", "LA", "RGBA", "P", "PA", "CMYK", "YCbCr", "1"):
        raise InputError(f"{path}: unsupported pixel mode {image.mode}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError(f"{path}: image has no pixels")
    return np.ascontiguousarray(rgb)


def save_png(path, rgb: np.ndarray) -> None:
    """Write (H, W, 3) uint8 RGB as PNG."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(path, format="PNG")
