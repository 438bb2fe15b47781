"""Body and part crops on the CPU, in numpy (no torch). The CUDA kernel in bodyrt.kernels does the same.

Semantics (shared/REFERENCE.md, section 2):

part_crops: crop pixel (u, v) of a square box (centre (cx, cy), side S, crop size n) samples the
    normalised image at x = cx - S/2 + S*u/(n-1), y = cy - S/2 + S*v/(n-1) (pixel centres at
    integers), bilinearly, with taps outside the image counting as zero in normalised space:
    grid_sample(normalised, grid, bilinear, zeros, align_corners=True). A mirrored crop (the left
    hand) holds in column u what column n-1-u would.
body_crops: integer rectangle [trunc(c - S/2), trunc(c + S/2)) per axis, S = scale * longer box
    side, cut from the [0, 1] image with zeros outside it (zero before normalisation), resized as
    cv2.resize INTER_LINEAR does, then normalised; plus the float crop transform.

Both are separable: each output row and column has two taps and two weights per axis, so a crop is
two weighted sums, over columns and then over rows, of the source pixels it touches. Positions are
computed in float64: float32 coordinates near x = 1000 px are off by up to 6e-5 px, which moves a
crop value on a sharp edge by 3e-4.

Images are (H, W, 3) uint8 arrays, RGB or BGR (channel_order), any strides; crops come out in RGB
channel order, (K, 3, n, n) float32.
"""

import numpy as np

from bodyrt.errors import InputError

# Body-crop rectangles reaching beyond this many pixels are rejected (the CUDA kernel keeps them in int).
MAX_BOX_COORDINATE = 2.0**30


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise InputError(f"image must be (H, W, 3) uint8 with at least one pixel, got {image.shape} {image.dtype}")
    return image


def _channel_indices(channel_order: str) -> list:
    """Source channel for each of R, G, B."""
    if channel_order == "rgb":
        return [0, 1, 2]
    if channel_order == "bgr":
        return [2, 1, 0]
    raise InputError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")


def _normalisation(mean, std):
    mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    std = np.asarray(std, dtype=np.float32).reshape(-1)
    if mean.shape != (3,) or std.shape != (3,) or not np.all(np.isfinite(mean)) or not np.all(std > 0):
        raise InputError(f"mean and std must be 3 finite numbers with std > 0, got mean={mean}, std={std}")
    return mean.reshape(3, 1, 1), std.reshape(3, 1, 1)


def _zero_outside(first: np.ndarray, fraction: np.ndarray, length: int):
    """Two taps per sample along one axis -> (indices (n, 2) clamped into the image, weights (n, 2) float32).

    first (n,) int64 index of the first tap, fraction (n,) float32 weight of the second; a tap
    outside [0, length) gets weight zero (its clamped index reads a real pixel that counts for nothing).
    """
    indices = np.stack([first, first + 1], axis=1)
    weights = np.stack([1.0 - fraction, fraction], axis=1).astype(np.float32)
    weights[(indices < 0) | (indices >= length)] = 0.0
    return np.clip(indices, 0, length - 1), weights


def part_crop_taps(positions: np.ndarray, length: int):
    """Bilinear taps for grid_sample-style sampling at float64 pixel positions (n,) along an axis of `length`."""
    # Beyond [-1, length] both taps are outside; clipping keeps floor() small and changes nothing else.
    positions = np.clip(positions, -2.0, length + 1.0)
    first = np.floor(positions)
    return _zero_outside(first.astype(np.int64), (positions - first).astype(np.float32), length)


def body_crop_taps(crop_size: int, rect_origin: int, rect_length: int, length: int):
    """cv2.resize INTER_LINEAR taps from a rectangle of rect_length pixels at image pixel rect_origin.

    Source position (d + 0.5) * rect_length/crop_size - 0.5 in float64, clamped to the rectangle's
    edge pixels, as OpenCV builds its tables; taps outside the image get weight 0. (OpenCV 4 rounded
    the position to float32 first; for crop_size 256 both are exact. float64 matches OpenCV 5 at any size.)
    """
    scale = 1.0 / (crop_size / rect_length)
    source = (np.arange(crop_size) + 0.5) * scale - 0.5
    first = np.floor(source)
    fraction = (source - first).astype(np.float32)
    first = first.astype(np.int64)
    at_left = first < 0
    at_right = first >= rect_length - 1
    first[at_left], fraction[at_left] = 0, 0.0
    first[at_right], fraction[at_right] = rect_length - 1, 0.0
    return _zero_outside(rect_origin + first, fraction, length)


def _weighted_taps(image, channels, rows, row_weights, columns, column_weights, mean=None, std=None, *,
                   pixel_scale: float):
    """Bilinear samples of the image times pixel_scale (the manifest's; [0, 1] for 8-bit images) -> (3, n, m)
    float32, RGB order.

    rows (n, 2) and columns (m, 2) are image indices with their weights (outside taps weigh 0).
    With mean and std (3,), each tap is normalised before it is weighted (part crops). The sums run
    over columns first, then rows, over only the rows the taps touch, in the kernel's float32 order,
    so this and the CUDA kernel agree to rounding.
    """
    first, last = int(rows.min()), int(rows.max())
    window = image[first:last + 1]
    rows = rows - first
    left = window.take(columns[:, 0], axis=1)[..., channels].astype(np.float32) / np.float32(1.0 / pixel_scale)
    right = window.take(columns[:, 1], axis=1)[..., channels].astype(np.float32) / np.float32(1.0 / pixel_scale)
    if mean is not None:
        left, right = (left - mean) / std, (right - mean) / std
    across = left * column_weights[None, :, 0, None] + right * column_weights[None, :, 1, None]  # (rows, m, 3)
    result = across[rows[:, 0]] * row_weights[:, 0, None, None] + across[rows[:, 1]] * row_weights[:, 1, None, None]
    return np.moveaxis(result, 2, 0)


def check_part_boxes(centres, sizes, mirror):
    """centres (K, 2), sizes (K,), mirror (K,) -> float64 centres, float64 sizes, bool mirror.

    Raises InputError for mismatched shapes, a non-finite value or a negative size (naming the box).
    A box partly or wholly outside the image is valid: its outside samples are zero.
    """
    centres = np.asarray(centres, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    mirror = np.asarray(mirror, dtype=bool)
    count = len(sizes) if sizes.ndim == 1 else -1
    if centres.shape != (count, 2) or sizes.shape != (count,) or mirror.shape != (count,):
        raise InputError(f"part crops need centres (K, 2), sizes (K,) and mirror (K,), got centres {centres.shape}, "
                         f"sizes {sizes.shape}, mirror {mirror.shape}")
    for index in range(count):
        (cx, cy), size = centres[index], sizes[index]
        if not (np.isfinite(cx) and np.isfinite(cy) and np.isfinite(size)) or size < 0:
            raise InputError(f"part box {index} (cx, cy, size) = ({cx}, {cy}, {size}) is not finite or has a "
                             "negative size")
    return centres, sizes, mirror


def part_crops(image, centres, sizes, crop_size: int, mirror, mean, std, channel_order: str = "rgb", *,
               pixel_scale: float) -> np.ndarray:
    """Bilinear square crops of the normalised image, zero outside it (grid_sample, align_corners=True).

    image (H, W, 3) uint8, any strides; centres (K, 2) and sizes (K,) full-image pixels; crop_size n
    (224 hands, 256 face); mirror (K,) bool flips a crop horizontally; mean, std (3,) RGB order.
    Returns (K, 3, n, n) float32, RGB channel order. Raises InputError as check_part_boxes does.
    """
    image = _check_image(image)
    channels = _channel_indices(channel_order)
    mean, std = _normalisation(mean, std)
    centres, sizes, mirror = check_part_boxes(centres, sizes, mirror)
    if int(crop_size) != crop_size or crop_size < 2:
        raise InputError(f"crop_size must be an integer >= 2, got {crop_size}")
    crop_size = int(crop_size)
    height, width, _ = image.shape
    steps = np.arange(crop_size, dtype=np.float64) / (crop_size - 1)
    crops = np.empty((len(sizes), 3, crop_size, crop_size), dtype=np.float32)
    for index, ((cx, cy), size) in enumerate(zip(centres, sizes)):
        xs = (cx - size / 2.0) + size * steps
        ys = (cy - size / 2.0) + size * steps
        if mirror[index]:
            xs = xs[::-1]
        rows, row_weights = part_crop_taps(ys, height)
        columns, column_weights = part_crop_taps(xs, width)
        # Zero padding in normalised space: normalise the taps, then outside taps weigh nothing.
        crops[index] = _weighted_taps(image, channels, rows, row_weights, columns, column_weights,
                                      mean.reshape(3), std.reshape(3), pixel_scale=pixel_scale)
    return crops


def body_crop_rect(box, scale: float):
    """(x0, y0, x1, y1) -> (centre (2,), size S, left, top, width, height) of the integer rectangle.

    centre and S are float64 (they make the crop transform); the rectangle is [trunc(c - S/2),
    trunc(c + S/2)) per axis, truncation toward zero.
    """
    x0, y0, x1, y1 = (float(value) for value in box)
    centre = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    size = scale * max(x1 - x0, y1 - y0)
    upper_left = np.trunc(centre - size / 2.0)
    lower_right = np.trunc(centre + size / 2.0)
    left, top = (int(value) for value in upper_left)
    width, height = (int(value) for value in lower_right - upper_left)
    return centre, size, left, top, width, height


def check_person_boxes(boxes, image_width: int, image_height: int, scale: float) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 -> float64 boxes, or InputError naming the first bad box.

    Bad: a non-finite value, x1 <= x0 or y1 <= y0 (empty or inverted), no overlap with the image
    [0, W] x [0, H], a box so small its integer rectangle is empty, or one whose rectangle reaches
    beyond 2^30 px (the CUDA kernel keeps rectangles in int).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"person boxes must be (N, 4) x0, y0, x1, y1, got shape {boxes.shape}")
    for index, box in enumerate(boxes):
        x0, y0, x1, y1 = box
        problem = None
        if not np.all(np.isfinite(box)):
            problem = "is not finite"
        elif x1 <= x0 or y1 <= y0:
            problem = "is empty or inverted (needs x1 > x0 and y1 > y0)"
        elif x1 <= 0 or y1 <= 0 or x0 >= image_width or y0 >= image_height:
            problem = f"is entirely outside the {image_width}x{image_height} image"
        else:
            _, _, left, top, width, height = body_crop_rect(box, scale)
            if width <= 0 or height <= 0:
                problem = "is too small: its integer crop rectangle is empty"
            elif max(abs(left), abs(top), abs(left + width), abs(top + height)) >= MAX_BOX_COORDINATE:
                problem = f"is too large: its crop rectangle reaches beyond {MAX_BOX_COORDINATE:.0f} px"
        if problem:
            raise InputError(f"person box {index} (x0, y0, x1, y1) = ({x0:g}, {y0:g}, {x1:g}, {y1:g}) {problem}")
    return boxes


def body_crop_transform(centre, size: float, crop_size: int) -> np.ndarray:
    """(3, 3) float32 full-image pixels -> crop pixels: diag k = crop_size/S, translation crop_size*(0.5 - c/S)."""
    transform = np.eye(3)
    transform[0, 0] = transform[1, 1] = crop_size / size
    transform[:2, 2] = crop_size * (0.5 - centre / size)
    return transform.astype(np.float32)


def body_crops(image, boxes, mean, std, crop_size: int, scale: float, channel_order: str = "rgb", *,
               pixel_scale: float):
    """The body network's input crops and their crop transforms.

    image (H, W, 3) uint8, any strides; boxes (N, 4) x0, y0, x1, y1 full-image pixels; mean, std (3,).
    Returns crops (N, 3, crop_size, crop_size) float32 (normalised, RGB) and transforms (N, 3, 3)
    float32 mapping full-image pixels to crop pixels. Raises InputError for a bad box (see
    check_person_boxes) naming its index and values.
    """
    image = _check_image(image)
    channels = _channel_indices(channel_order)
    mean, std = _normalisation(mean, std)
    height, width, _ = image.shape
    boxes = check_person_boxes(boxes, width, height, scale)
    crops = np.empty((len(boxes), 3, crop_size, crop_size), dtype=np.float32)
    transforms = np.empty((len(boxes), 3, 3), dtype=np.float32)
    for index, box in enumerate(boxes):
        centre, size, left, top, rect_width, rect_height = body_crop_rect(box, scale)
        rows, row_weights = body_crop_taps(crop_size, top, rect_height, height)
        columns, column_weights = body_crop_taps(crop_size, left, rect_width, width)
        # Zero padding before normalisation: interpolate the [0, 1] pixels, then normalise.
        crops[index] = (_weighted_taps(image, channels, rows, row_weights, columns, column_weights,
                                       pixel_scale=pixel_scale) - mean) / std
        transforms[index] = body_crop_transform(centre, size, crop_size)
    return crops, transforms
