"""What `bodyrt run` is asked to do: image files, folders and glob patterns; per-image person boxes.

Inputs expand to a list of images, each with its output folder: the image's path relative to the
deepest folder holding every image of the run, so `a/photo.jpg` and `b/photo.jpg` give `a/photo.jpg/`
and `b/photo.jpg/`, and `same.jpg` and `same.png` give `same.jpg/` and `same.png/`; distinct files
can never share one.

Boxes files (JSON, pixels of the image as displayed, after its EXIF orientation):

- bodyrt's: `{"IMAGE": [[x0, y0, x1, y1], ...], ...}`
- COCO detection results: `[{"image_id": ..., "bbox": [x, y, width, height], "score": ..,
  "category_id": 1}, ...]`, each entry naming its image by `file_name`, or by an `image_id` that is
  a file name or the number in the file's name (COCO's `000000397133.jpg` is 397133);
- a COCO dataset file: `{"images": [{"id", "file_name"}, ...], "annotations": [...as above]}`.

Only category 1 (person) is taken from COCO files, and entries scoring below the minimum score are
dropped. An image key is a path; it names the run's image whose path ends with it (`photo.jpg`,
`b/photo.jpg` or an absolute path), the longest key winning; a key that would name two images of
the run is an error for both.
"""

import glob
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from bodyrt.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
GLOB_CHARACTERS = set("*?[")
PERSON_CATEGORY = 1


@dataclass
class ImageInput:
    """One image of a run. error: why it cannot run (set while expanding or matching boxes)."""

    path: Path
    given: str  # the command-line argument it came from
    output_folder: PurePath | None = None  # relative to --out
    boxes: list | None = None  # from a boxes file; None: use --box or the whole image
    error: str | None = None
    notes: list = field(default_factory=list)


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def _folder_images(folder: Path, exclude: Path | None) -> list:
    """JPEG and PNG files under folder, recursively, sorted; hidden entries and `exclude` skipped."""
    found = []
    for root, folders, files in os.walk(folder):
        root = Path(root)
        folders[:] = sorted(name for name in folders
                            if not name.startswith(".") and not _inside(root / name, exclude))
        found += [root / name for name in sorted(files)
                  if not name.startswith(".") and _is_image_name(root / name)]
    return found


def expand_inputs(arguments, exclude=None) -> list:
    """Command-line image arguments -> [ImageInput], in order, each file once.

    A file is taken as given; a folder gives its JPEG and PNG files (recursively, hidden entries
    skipped); anything else with *, ? or [ is a glob pattern (`**` recursive) giving its JPEG and PNG
    files. exclude: a folder whose files are never inputs (the run's output folder). A missing file
    or a pattern matching nothing becomes an ImageInput with an error.
    """
    exclude = Path(exclude).resolve() if exclude is not None else None
    images, seen = [], set()

    def add(path: Path, given: str):
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            images.append(ImageInput(path=path, given=given))

    for argument in arguments:
        argument = str(argument)
        path = Path(argument)
        if path.is_dir():
            found = _folder_images(path, exclude)
            if not found:
                images.append(ImageInput(path=path, given=argument, error=f"{path}: folder holds no JPEG or PNG file"))
            for image in found:
                add(image, argument)
        elif path.exists() or path.is_symlink() or not GLOB_CHARACTERS & set(argument):
            add(path, argument)  # a missing file is reported when it is read
        else:
            matches = [Path(match) for match in sorted(glob.glob(argument, recursive=True))]
            matches = [match for match in matches
                       if match.is_file() and _is_image_name(match) and not _inside(match, exclude)]
            if not matches:
                images.append(ImageInput(path=path, given=argument,
                                         error=f"{argument}: pattern matches no JPEG or PNG file"))
            for match in matches:
                add(match, argument)
    assign_output_folders(images)
    return images


def assign_output_folders(images: list) -> None:
    """Set each image's output_folder: its path relative to the deepest folder holding every image."""
    runnable = [image for image in images if image.error is None]
    if not runnable:
        return
    absolute = [Path(os.path.abspath(image.path)) for image in runnable]
    root = Path(os.path.commonpath([str(path.parent) for path in absolute]))
    for image, path in zip(runnable, absolute):
        image.output_folder = PurePath(path.relative_to(root))


# -- boxes files ------------------------------------------------------------------------------------
def _box_xyxy(values, where: str) -> list:
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise InputError(f"{where}: a box is 4 numbers, got {values!r}")
    try:
        box = [float(value) for value in values]
    except (TypeError, ValueError):
        raise InputError(f"{where}: a box is 4 numbers, got {values!r}") from None
    if not all(math.isfinite(value) for value in box):
        raise InputError(f"{where}: box {values!r} has a value that is not finite")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise InputError(f"{where}: box {values!r} is empty (x1 <= x0 or y1 <= y0)")
    return box


def _coco_entries(path: Path, entries: list, min_score: float, names_by_id: dict) -> dict:
    """COCO detections -> {key: [xyxy boxes]} (key: a path string or an int image number)."""
    boxes = {}
    for index, entry in enumerate(entries):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict) or "bbox" not in entry:
            raise InputError(f"{where}: a COCO detection needs 'bbox' and 'image_id' or 'file_name'")
        if "file_name" in entry:
            key = str(entry["file_name"])
        elif "image_id" in entry:
            image_id = entry["image_id"]
            key = names_by_id.get(image_id, image_id if isinstance(image_id, int) else str(image_id))
        else:
            raise InputError(f"{where}: names no image ('image_id' or 'file_name')")
        people = boxes.setdefault(key, [])  # an image whose detections are all dropped has no one
        if entry.get("category_id", PERSON_CATEGORY) != PERSON_CATEGORY:
            continue
        score = entry.get("score")
        if score is not None:
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise InputError(f"{where}: 'score' must be a number, got {score!r}")
            if not score >= min_score:
                continue
        x, y, width, height = _box_xywh(entry["bbox"], where)
        people.append(_box_xyxy([x, y, x + width, y + height], where))
    return boxes


def _box_xywh(values, where: str) -> list:
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise InputError(f"{where}: 'bbox' is [x, y, width, height], got {values!r}")
    try:
        return [float(value) for value in values]
    except (TypeError, ValueError):
        raise InputError(f"{where}: 'bbox' is [x, y, width, height], got {values!r}") from None


def read_boxes_file(path, min_score: float = 0.5) -> dict:
    """A boxes file (see the module doc) -> {key: [[x0, y0, x1, y1], ...]}; InputError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such boxes file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable JSON boxes file ({error})") from None
    if isinstance(data, list):
        return _coco_entries(path, data, min_score, {})
    if isinstance(data, dict) and "annotations" in data:
        images = data.get("images", [])
        if not isinstance(images, list) or not all(isinstance(image, dict) and "id" in image and "file_name" in image
                                                   for image in images):
            raise InputError(f"{path}: 'images' must be a list of {{'id', 'file_name'}}")
        names = {image["id"]: str(image["file_name"]) for image in images}
        if not isinstance(data["annotations"], list):
            raise InputError(f"{path}: 'annotations' must be a list of detections")
        return _coco_entries(path, data["annotations"], min_score, names)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected an object {{image: [[x0, y0, x1, y1], ...]}} or a COCO list")
    boxes = {}
    for key, values in data.items():
        if not isinstance(values, list):
            raise InputError(f"{path}: {key!r}: expected a list of boxes [[x0, y0, x1, y1], ...]")
        boxes[str(key)] = [_box_xyxy(box, f"{path}: {key!r}") for box in values]
    return boxes


def _key_parts(key) -> tuple:
    parts = [part for part in PurePath(key).parts if part not in (".", "")]
    return tuple(parts)


def _image_number(path: Path):
    stem = path.stem
    return int(stem) if stem.isdigit() else None


def match_boxes(images: list, boxes: dict, boxes_path) -> list:
    """Give every runnable image its boxes from a boxes file; returns the keys that matched nothing.

    A path key matches an image whose absolute path ends with the key's components; the longest
    matching key wins. An int key (COCO image_id) matches the image whose file stem is that number.
    An image with no key, or whose key also names another image, gets an error.
    """
    runnable = [image for image in images if image.error is None]
    chosen = {}
    for image in runnable:
        absolute = Path(os.path.abspath(image.path)).parts
        best = None
        for key in boxes:
            if isinstance(key, int):
                matches = _image_number(image.path) == key
                length = 0
            else:
                parts = _key_parts(key)
                if PurePath(key).is_absolute():
                    matches = tuple(PurePath(key).parts) == absolute
                else:
                    matches = bool(parts) and absolute[-len(parts):] == parts
                length = len(parts)
            if matches and (best is None or length > best[1]):
                best = (key, length)
        chosen[id(image)] = best[0] if best else None
    users = {}
    for image in runnable:
        key = chosen[id(image)]
        if key is not None:
            users.setdefault(key, []).append(image)
    for image in runnable:
        key = chosen[id(image)]
        if key is None:
            image.error = f"{image.path}: no entry for this image in the boxes file {boxes_path}"
        elif len(users[key]) > 1:
            others = ", ".join(str(other.path) for other in users[key])
            image.error = (f"{image.path}: key {key!r} of {boxes_path} names {len(users[key])} images ({others}); "
                           "give a longer path in the boxes file")
        else:
            image.boxes = boxes[key]
    return [key for key in boxes if key not in users]
