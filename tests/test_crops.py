"""The numpy crops of the CPU runtime (bodyrt.runtime.crops) against independent references.

Part crops: torch grid_sample in float64 (bilinear, zero padding, align_corners=True) on the
normalised image. Body crops: cv2.resize INTER_LINEAR on the zero-padded [0, 1] rectangle, whose
integer corners are computed here by hand. The references and the random cases are shared with
tests/test_kernel_host.py, which holds the CUDA kernel (host build) to the same ones.
"""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bodyrt.errors import InputError
from bodyrt.runtime.crops import body_crops, part_crops

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
PIXEL_SCALE = 1.0 / 255.0


# ---------------------------------------------------------------------------------------------
# References

def normalised_float64(image_rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float64, (pixel/255 - mean) / std with float32 constants."""
    unit = torch.from_numpy(image_rgb.astype(np.float64) / 255.0).permute(2, 0, 1)
    mean = torch.from_numpy(MEAN.astype(np.float64)).reshape(3, 1, 1)
    std = torch.from_numpy(STD.astype(np.float64)).reshape(3, 1, 1)
    return ((unit - mean) / std)[None]


def grid_sample_crop(normalised: torch.Tensor, centre_x, centre_y, size, crop_size: int, mirror: bool) -> np.ndarray:
    """One part crop by grid_sample(bilinear, zeros, align_corners=True), all in float64 -> (3, n, n)."""
    _, _, height, width = normalised.shape
    steps = np.arange(crop_size, dtype=np.float64) / (crop_size - 1)
    xs = (float(centre_x) - float(size) / 2) + float(size) * steps
    ys = (float(centre_y) - float(size) / 2) + float(size) * steps
    if mirror:
        xs = xs[::-1]
    grid_x = np.broadcast_to(2 * xs / (width - 1) - 1, (crop_size, crop_size))
    grid_y = np.broadcast_to((2 * ys / (height - 1) - 1)[:, None], (crop_size, crop_size))
    grid = torch.from_numpy(np.stack([grid_x, grid_y], axis=-1).copy())[None]
    return F.grid_sample(normalised, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0].numpy()


def cv2_body_crop(image_rgb: np.ndarray, box, crop_size: int = 256, scale: float = 1.2) -> np.ndarray:
    """The body crop as REFERENCE.md states it: rectangle [trunc(c - S/2), trunc(c + S/2)) of the [0, 1]
    image with zeros outside, cv2.resize INTER_LINEAR to crop_size, then normalised -> (3, n, n)."""
    x0, y0, x1, y1 = (float(value) for value in box)
    size = scale * max(x1 - x0, y1 - y0)
    left, right = int(np.trunc((x0 + x1) / 2 - size / 2)), int(np.trunc((x0 + x1) / 2 + size / 2))
    top, bottom = int(np.trunc((y0 + y1) / 2 - size / 2)), int(np.trunc((y0 + y1) / 2 + size / 2))
    height, width, _ = image_rgb.shape
    rectangle = np.zeros((bottom - top, right - left, 3), dtype=np.float32)
    inside_y, inside_x = slice(max(top, 0), min(bottom, height)), slice(max(left, 0), min(right, width))
    if inside_y.start < inside_y.stop and inside_x.start < inside_x.stop:
        rectangle[inside_y.start - top:inside_y.stop - top, inside_x.start - left:inside_x.stop - left] = \
            image_rgb[inside_y, inside_x] / np.float32(255.0)
    resized = cv2.resize(rectangle, (crop_size, crop_size), interpolation=cv2.INTER_LINEAR)
    return ((resized - MEAN) / STD).transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------------
# Random cases

def image_with_pitch(rng, height: int, width: int, extra_bytes: int) -> np.ndarray:
    """A random (H, W, 3) uint8 view whose rows are 3*W + extra_bytes apart (any extra, even odd)."""
    pitch = 3 * width + extra_bytes
    buffer = rng.integers(0, 256, size=height * pitch, dtype=np.uint8)
    return np.lib.stride_tricks.as_strided(buffer, (height, width, 3), (pitch, 3, 1), writeable=False)


def random_part_box(rng, height: int, width: int) -> list:
    """(cx, cy, S) of one of: inside, straddling an edge, wholly outside, tiny (< 1 px), zero, huge."""
    kind = rng.integers(6)
    if kind == 0:
        return [rng.uniform(0, width - 1), rng.uniform(0, height - 1), rng.uniform(1, min(height, width))]
    if kind == 1:
        edge_x = rng.choice([0.0, width - 1.0])
        return [edge_x + rng.uniform(-3, 3), rng.uniform(-3, height + 2), rng.uniform(2, 2 * max(height, width))]
    if kind == 2:
        return [rng.choice([-1, 1]) * rng.uniform(2 * width, 5 * width), rng.uniform(-height, 2 * height),
                rng.uniform(1, width)]
    if kind == 3:
        return [rng.uniform(-1, width), rng.uniform(-1, height), rng.uniform(0, 1)]
    if kind == 4:
        return [rng.uniform(-1, width), rng.uniform(-1, height), 0.0]
    return [rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 1000) * max(height, width)]


def random_part_case(rng) -> dict:
    """An image (odd size, odd pitch), body-engine-shaped boxes (people, 3, 3), parts, mirror, crop size."""
    height, width = (int(value) for value in rng.integers(2, 60, size=2))
    people = int(rng.integers(1, 3))
    boxes = np.array([[random_part_box(rng, height, width) for _ in range(3)] for _ in range(people)],
                     dtype=np.float32)
    first = int(rng.integers(0, 3))
    parts = list(range(first, int(rng.integers(first + 1, 4))))
    return {"image": image_with_pitch(rng, height, width, int(rng.integers(0, 8))), "boxes": boxes, "parts": parts,
            "mirror": [bool(flag) for flag in rng.integers(0, 2, size=len(parts))],
            "crop_size": int(rng.integers(2, 24)), "channel_order": str(rng.choice(["rgb", "bgr"]))}


def part_reference(case: dict) -> np.ndarray:
    """grid_sample crops for a random_part_case, person-major -> (people * parts, 3, n, n) float64."""
    rgb = case["image"][..., ::-1] if case["channel_order"] == "bgr" else case["image"]
    normalised = normalised_float64(np.ascontiguousarray(rgb))
    return np.stack([grid_sample_crop(normalised, *case["boxes"][person, part], case["crop_size"], mirror)
                     for person in range(len(case["boxes"])) for part, mirror in zip(case["parts"], case["mirror"])])


def random_person_box(rng, height: int, width: int) -> list:
    """x0, y0, x1, y1 overlapping the image: inside, straddling, small (a few px) or larger than it."""
    kind = rng.integers(4)
    if kind == 0:
        x0, y0 = rng.uniform(0, width - 2), rng.uniform(0, height - 2)
        return [x0, y0, rng.uniform(x0 + 1, width), rng.uniform(y0 + 1, height)]
    if kind == 1:
        x0, y0 = rng.uniform(-width, width - 1), rng.uniform(-height, height - 1)
        x1, y1 = max(x0, 0) + rng.uniform(1, 2 * width), max(y0, 0) + rng.uniform(1, 2 * height)
        return [x0, y0, x1, y1]
    if kind == 2:
        x0, y0 = rng.uniform(0, width - 1), rng.uniform(0, height - 1)
        return [x0, y0, x0 + rng.uniform(0.9, 4), y0 + rng.uniform(0.9, 4)]
    return [rng.uniform(-3 * width, 0), rng.uniform(-3 * height, 0), rng.uniform(width, 3 * width),
            rng.uniform(height, 3 * height)]


def random_body_case(rng) -> dict:
    height, width = (int(value) for value in rng.integers(5, 200, size=2))
    boxes = np.array([random_person_box(rng, height, width) for _ in range(int(rng.integers(1, 3)))],
                     dtype=np.float32)
    return {"image": image_with_pitch(rng, height, width, int(rng.integers(0, 8))), "boxes": boxes,
            "crop_size": int(rng.choice([256, int(rng.integers(1, 40))])),
            "channel_order": str(rng.choice(["rgb", "bgr"]))}


def body_reference(case: dict) -> np.ndarray:
    rgb = case["image"][..., ::-1] if case["channel_order"] == "bgr" else case["image"]
    return np.stack([cv2_body_crop(np.ascontiguousarray(rgb), box, case["crop_size"]) for box in case["boxes"]])


def hand_computed_transform(box, crop_size: int = 256, scale: float = 1.2) -> np.ndarray:
    x0, y0, x1, y1 = (float(value) for value in box)
    size = scale * max(x1 - x0, y1 - y0)
    k = crop_size / size
    return np.array([[k, 0, crop_size * (0.5 - (x0 + x1) / 2 / size)],
                     [0, k, crop_size * (0.5 - (y0 + y1) / 2 / size)], [0, 0, 1]])


# ---------------------------------------------------------------------------------------------
# The numpy runtime crops

def numpy_part_crops(case: dict) -> np.ndarray:
    boxes = case["boxes"][:, case["parts"]]
    mirror = np.tile(case["mirror"], len(boxes))
    return part_crops(case["image"], boxes[..., :2].reshape(-1, 2), boxes[..., 2].reshape(-1), case["crop_size"],
                      mirror, MEAN, STD, channel_order=case["channel_order"], pixel_scale=PIXEL_SCALE)


def test_numpy_part_crops_match_grid_sample_on_random_cases():
    rng = np.random.default_rng(11)
    worst = 0.0
    for _ in range(150):
        case = random_part_case(rng)
        crops = numpy_part_crops(case)
        assert crops.dtype == np.float32
        worst = max(worst, float(np.abs(crops - part_reference(case)).max()))
    assert worst < 1e-5


def test_numpy_hand_and_face_crops_of_a_full_hd_frame_match_grid_sample():
    rng = np.random.default_rng(12)
    image = image_with_pitch(rng, 720, 1280, 0)
    boxes = np.array([[[640.3, 360.7, 131.9], [1250.2, 20.4, 140.0], [700.0, 200.0, 95.5]]], dtype=np.float32)
    for parts, mirror, crop_size in (([0, 1], [False, True], 224), ([2], [False], 256)):
        case = {"image": image, "boxes": boxes, "parts": parts, "mirror": mirror, "crop_size": crop_size,
                "channel_order": "bgr"}
        np.testing.assert_allclose(numpy_part_crops(case), part_reference(case), rtol=0, atol=1e-5)


def test_numpy_body_crops_match_cv2_resize_on_random_cases():
    rng = np.random.default_rng(13)
    for _ in range(60):
        case = random_body_case(rng)
        crops, transforms = body_crops(case["image"], case["boxes"], MEAN, STD, crop_size=case["crop_size"], scale=1.2,
                                       pixel_scale=PIXEL_SCALE,
                                       channel_order=case["channel_order"])
        np.testing.assert_allclose(crops, body_reference(case), rtol=0, atol=1e-5)
        for box, transform in zip(case["boxes"], transforms):
            np.testing.assert_allclose(transform, hand_computed_transform(box, case["crop_size"]), rtol=1e-6,
                                       atol=1e-4)


def test_numpy_body_crop_transform_by_hand():
    """Box (100, 50) - (300, 450): c = (200, 250), S = 1.2 * 400 = 480, k = 256/480."""
    image = np.zeros((400, 600, 3), dtype=np.uint8)
    _, transforms = body_crops(image, [[100, 50, 300, 450]], MEAN, STD, crop_size=256, scale=1.2, pixel_scale=PIXEL_SCALE)
    expected = [[256 / 480, 0, 256 * (0.5 - 200 / 480)], [0, 256 / 480, 256 * (0.5 - 250 / 480)], [0, 0, 1]]
    np.testing.assert_allclose(transforms[0], expected, rtol=1e-6)
    assert transforms[0, 0, 2] == pytest.approx(21.3333333, abs=1e-5)
    assert transforms[0, 1, 2] == pytest.approx(-5.3333333, abs=1e-5)


BAD_PERSON_BOXES = {
    "empty": ([10, 10, 10, 30], "empty or inverted"),
    "inverted": ([30, 10, 10, 30], "empty or inverted"),
    "nan": ([10, np.nan, 20, 30], "not finite"),
    "infinite": ([10, 10, np.inf, 30], "not finite"),
    "fully outside": ([-50, 10, -5, 30], "entirely outside"),
    "integer rectangle empty": ([5.45, 5.45, 5.55, 5.55], "integer crop rectangle is empty"),
}


@pytest.mark.parametrize("name", sorted(BAD_PERSON_BOXES))
def test_numpy_body_crops_reject_a_bad_box_by_index(name):
    box, reason = BAD_PERSON_BOXES[name]
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    with pytest.raises(InputError, match=rf"person box 1 .*{reason}"):
        body_crops(image, [[1, 1, 30, 30], box], MEAN, STD, crop_size=256, scale=1.2, pixel_scale=PIXEL_SCALE)


@pytest.mark.parametrize("centre, size", [((np.nan, 3.0), 4.0), ((2.0, np.inf), 4.0), ((2.0, 3.0), np.nan),
                                          ((2.0, 3.0), -0.5)])
def test_numpy_part_crops_reject_a_non_finite_or_inverted_box_by_index(centre, size):
    image = np.zeros((10, 12, 3), dtype=np.uint8)
    with pytest.raises(InputError, match=r"part box 1 "):
        part_crops(image, [(5.0, 5.0), centre], [4.0, size], 8, [False, False], MEAN, STD, pixel_scale=PIXEL_SCALE)


def test_numpy_part_crops_of_a_box_wholly_outside_are_zero():
    """A hand out of frame is legitimate (the reference gives zeros), so it is not an error."""
    image = np.full((10, 12, 3), 200, dtype=np.uint8)
    crops = part_crops(image, [(-40.0, 5.0)], [6.0], 8, [False], MEAN, STD, pixel_scale=PIXEL_SCALE)
    assert not crops.any()
