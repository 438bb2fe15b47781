"""The bundle manifest (format 2) as frozen dataclasses, and its one parser.

    manifest = parse_manifest(json.loads(text))       # BundleError naming the JSON path at fault
    manifest.step("body_crop").crop_size             # 256
    text = json.dumps(manifest.to_json())            # what export writes

Every field here is read by the runtime or by a bodyrt command; nothing else is allowed in a
manifest (an unknown field is an error, so a typo cannot silently fall back to a default). The
runtime takes every constant it needs from here: crop sizes and box scales (the crop steps), pixel
scale, mean and std (preprocessing), focal length (the pinhole step), output names (results).

Steps, in order, each with a unique name, read named arrays from a shared table and write new ones:
    body_crop    person_boxes -> body crops + crop transforms        (BodyCropStep)
    part_crops   part boxes -> crops of some parts, some mirrored     (PartCropsStep)
    graph        a stage graph: its inputs -> its outputs             (GraphStep)
    pinhole      weak-perspective camera -> focal length + pinhole t  (PinholeStep)
"""

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from bodyrt.errors import BundleError

FORMAT_NAME = "bodyrt-bundle"
FORMAT_VERSION = 2
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
INPUT_TENSOR = "person_boxes"  # the one tensor the caller provides
REEXPORT_COMMAND = ("bodyrt export --checkpoint CHECKPOINT --body-model BODY_MODEL --out BUNDLE "
                    "(then bodyrt quantize / --engine tensorrt again if the bundle had them)")


# --------------------------------------------------------------------------------------- classes

@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: shape with symbolic axes by name ("people"), numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str


@dataclass(frozen=True)
class Stage:
    """One ONNX graph of the bundle."""

    name: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class BodyCropStep:
    """Crops of crop_size around each person box enlarged box_scale times (its longer side), and
    the (N, 3, 3) image -> crop transforms."""

    name: str
    boxes: str
    crops: str
    transforms: str
    crop_size: int
    box_scale: float
    op: str = "body_crop"

    def inputs(self) -> tuple:
        return (self.boxes,)

    def outputs(self) -> tuple:
        return (self.crops, self.transforms)


@dataclass(frozen=True)
class PartCropsStep:
    """Square crops around part boxes (N, P, 3) cx, cy, side: parts selects P entries, mirror flips
    some horizontally. Output (N, len(parts), 3, crop_size, crop_size)."""

    name: str
    boxes: str
    parts: tuple[int, ...]
    mirror: tuple[bool, ...]
    crop_size: int
    output: str
    op: str = "part_crops"

    def inputs(self) -> tuple:
        return (self.boxes,)

    def outputs(self) -> tuple:
        return (self.output,)


@dataclass(frozen=True)
class GraphStep:
    """Run a stage graph; its inputs and outputs are named by the stage's tensor specs."""

    name: str
    stage: str
    op: str = "graph"


@dataclass(frozen=True)
class PinholeStep:
    """The ExPose demo's pinhole conversion of the weak-perspective camera (see pinhole_camera)."""

    name: str
    scale: str
    translation: str
    crop_transforms: str
    focal_length: float
    crop_size: int
    focal_length_output: str
    translation_output: str
    op: str = "pinhole"

    def inputs(self) -> tuple:
        return (self.scale, self.translation, self.crop_transforms)

    def outputs(self) -> tuple:
        return (self.focal_length_output, self.translation_output)


STEP_KINDS = {
    "body_crop": BodyCropStep, "part_crops": PartCropsStep, "graph": GraphStep, "pinhole": PinholeStep}
Step = BodyCropStep | PartCropsStep | GraphStep | PinholeStep


@dataclass(frozen=True)
class Preprocessing:
    """crop value = (pixel * pixel_scale - mean[c]) / std[c], channels in RGB order."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_scale: float


@dataclass(frozen=True)
class Mesh:
    model: str
    num_vertices: int
    faces: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Source:
    checkpoint: str
    checkpoint_sha256: str
    body_model: str
    body_model_sha256: str
    untrained: bool


@dataclass(frozen=True)
class Calibration:
    folder: str
    images: int
    skipped: int


@dataclass(frozen=True)
class Int8Variant:
    """Quantized graphs written by `bodyrt quantize`: stage -> file; stages left out stay fp32."""

    stages: dict[str, str]
    method: str
    calibration: Calibration
    calibration_deviation: dict[str, dict[str, float]]
    tools: dict[str, str]
    created: str


@dataclass(frozen=True)
class Variants:
    int8: Int8Variant | None = None


@dataclass(frozen=True)
class GpuGraph:
    """The graph a GPU backend runs for a stage (fp16: a converted copy)."""

    file: str
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class Engines:
    """TensorRT engines built for one TensorRT version and GPU: stage -> engine file."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    max_people: int
    opt_people: int
    engines: dict[str, str]


@dataclass(frozen=True)
class Gpu:
    precision: str
    graphs: dict[str, GpuGraph]
    tensorrt: Engines | None = None


@dataclass(frozen=True)
class Manifest:
    format: str
    format_version: int
    arch: str
    created: str
    tools: dict[str, str | int]
    source: Source
    preprocessing: Preprocessing
    fp32_stages: tuple[str, ...]  # stages that stay fp32 when bf16 or int8 is asked for
    stages: tuple[Stage, ...]
    steps: tuple[Step, ...]
    results: tuple[str, ...]
    mesh: Mesh
    files: dict[str, str]  # every file of the bundle -> sha256
    variants: Variants = field(default_factory=Variants)
    gpu: Gpu | None = None

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise BundleError(f"manifest: no stage named {name!r}")

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise BundleError(f"manifest: no step named {name!r}")

    def steps_of(self, kind) -> list:
        return [step for step in self.steps if isinstance(step, kind)]

    @property
    def body_crop(self) -> BodyCropStep:
        """The (first) body crop step: its crop size is what the weak-perspective camera refers to."""
        steps = self.steps_of(BodyCropStep)
        if not steps:
            raise BundleError("manifest: no body_crop step")
        return steps[0]

    def step_outputs(self, step) -> tuple:
        if isinstance(step, GraphStep):
            return tuple(spec.name for spec in self.stage(step.stage).outputs)
        return step.outputs()

    def step_inputs(self, step) -> tuple:
        if isinstance(step, GraphStep):
            return tuple(spec.name for spec in self.stage(step.stage).inputs)
        return step.inputs()

    def gpu_graph(self, stage: str) -> GpuGraph:
        """The graph a GPU backend runs for a stage: the GPU section's (fp16), else the stage's own."""
        if self.gpu is not None and stage in self.gpu.graphs:
            return self.gpu.graphs[stage]
        own = self.stage(stage)
        return GpuGraph(file=own.file, precision="fp32", inputs=own.inputs, outputs=own.outputs)

    def to_json(self) -> dict:
        """The manifest as JSON-ready dicts and lists (what manifest.json holds)."""
        return _to_json(self)

    def replace(self, **changes) -> "Manifest":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------- parsing

def _to_json(value):
    if dataclasses.is_dataclass(value):
        out = {}
        for item in dataclasses.fields(value):
            member = getattr(value, item.name)
            if member is None:
                continue
            if item.name == "variants" and member == Variants():
                continue
            out[item.name] = _to_json(member)
        return out
    if isinstance(value, dict):
        return {key: _to_json(member) for key, member in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(member) for member in value]
    return value


def _type_name(kind) -> str:
    if dataclasses.is_dataclass(kind):
        return "an object"
    origin = typing.get_origin(kind)
    if origin in (tuple, list):
        return "a list"
    if origin is dict:
        return "an object"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(arg) for arg in typing.get_args(kind) if arg is not type(None))
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(kind, str(kind))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _parse(value, kind, path: str):
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        options = [option for option in typing.get_args(kind) if option is not type(None)]
        if len(options) == 1:  # optional X: X's own message, naming the nested field at fault
            return _parse(value, options[0], path)
        for option in options:
            try:
                return _parse(value, option, path)
            except BundleError:
                continue
        raise BundleError(f"{path}: expected {_type_name(kind)}, got {type(value).__name__}")
    if dataclasses.is_dataclass(kind):
        return _parse_object(value, kind, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise BundleError(f"{path}: expected a list, got {type(value).__name__}")
        item_kind = typing.get_args(kind)[0]
        return tuple(_parse(item, item_kind, f"{path}[{index}]") for index, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise BundleError(f"{path}: expected an object, got {type(value).__name__}")
        _, item_kind = typing.get_args(kind)
        return {key: _parse(item, item_kind, _join(path, key)) for key, item in value.items()}
    if kind is bool:
        if not isinstance(value, bool):
            raise BundleError(f"{path}: expected true or false, got {type(value).__name__}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BundleError(f"{path}: expected an integer, got {type(value).__name__}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BundleError(f"{path}: expected a number, got {type(value).__name__}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise BundleError(f"{path}: expected a string, got {type(value).__name__}")
        return value
    raise TypeError(f"manifest type {kind} at {path} has no parser")  # a bug here, not in the bundle


def _parse_object(value, kind, path: str):
    if not isinstance(value, dict):
        raise BundleError(f"{path}: expected an object, got {type(value).__name__}")
    hints = typing.get_type_hints(kind)
    known = {item.name: item for item in dataclasses.fields(kind)}
    for key in value:
        if key not in known:
            raise BundleError(f"{_join(path, key)}: unknown field (allowed: {', '.join(known)})")
    values = {}
    for name, item in known.items():
        where = _join(path, name)
        if name not in value:
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                raise BundleError(f"{where}: missing")
            continue
        if name == "steps" and kind is Manifest:
            values[name] = _parse_steps(value[name], where)
        else:
            values[name] = _parse(value[name], hints[name], where)
    return kind(**values)


def _parse_steps(value, path: str) -> tuple:
    if not isinstance(value, list):
        raise BundleError(f"{path}: expected a list, got {type(value).__name__}")
    steps = []
    for index, entry in enumerate(value):
        where = f"{path}[{index}]"
        if not isinstance(entry, dict):
            raise BundleError(f"{where}: expected an object, got {type(entry).__name__}")
        op = entry.get("op")
        if op not in STEP_KINDS:
            raise BundleError(f"{where}.op: expected one of {', '.join(STEP_KINDS)}, got {op!r}")
        steps.append(_parse_object(entry, STEP_KINDS[op], where))
    return tuple(steps)


def parse_steps(value) -> tuple:
    """A step list (parsed JSON) -> step dataclasses; BundleError naming the JSON path at fault."""
    return _parse_steps(value, "steps")


def _check_relative(file: str, where: str) -> None:
    path = PurePosixPath(file)
    if not file or path.is_absolute() or ".." in path.parts or "\\" in file or path.name != file:
        raise BundleError(f"{where}: {file!r} is not a file name inside the bundle")


def _check(manifest: Manifest, path: str) -> None:
    """What the types cannot say: names unique and defined, tensors produced before use, files listed."""
    if manifest.format != FORMAT_NAME:
        raise BundleError(f"{path}: format: expected {FORMAT_NAME!r}, got {manifest.format!r}")
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version: {manifest.format_version}, expected {FORMAT_VERSION}")
    pre = manifest.preprocessing
    for name in ("mean", "std"):
        values = getattr(pre, name)
        if len(values) != 3:
            raise BundleError(f"{path}: preprocessing.{name}: expected 3 values (R, G, B), got {len(values)}")
    if any(value <= 0 for value in pre.std) or not pre.pixel_scale > 0:
        raise BundleError(f"{path}: preprocessing: std and pixel_scale must be positive")
    stage_names = [stage.name for stage in manifest.stages]
    _check_unique(stage_names, f"{path}: stages", "stage")
    _check_unique([step.name for step in manifest.steps], f"{path}: steps", "step")
    for index, stage in enumerate(manifest.stages):
        _check_relative(stage.file, f"{path}: stages[{index}].file")
    for index, name in enumerate(manifest.fp32_stages):
        if name not in stage_names:
            raise BundleError(f"{path}: fp32_stages[{index}]: no stage named {name!r}")
    available = {INPUT_TENSOR}
    for index, step in enumerate(manifest.steps):
        where = f"{path}: steps[{index}]"
        if isinstance(step, GraphStep) and step.stage not in stage_names:
            raise BundleError(f"{where}.stage: no stage named {step.stage!r}")
        if isinstance(step, (BodyCropStep, PartCropsStep, PinholeStep)) and step.crop_size <= 0:
            raise BundleError(f"{where}.crop_size: must be positive, got {step.crop_size}")
        if isinstance(step, BodyCropStep) and not step.box_scale > 0:
            raise BundleError(f"{where}.box_scale: must be positive, got {step.box_scale}")
        if isinstance(step, PartCropsStep) and len(step.mirror) != len(step.parts):
            raise BundleError(f"{where}.mirror: {len(step.mirror)} entries for {len(step.parts)} parts")
        if isinstance(step, PinholeStep) and not step.focal_length > 0:
            raise BundleError(f"{where}.focal_length: must be positive, got {step.focal_length}")
        for tensor in manifest.step_inputs(step):
            if tensor not in available:
                raise BundleError(f"{where}: reads tensor {tensor!r}, which no earlier step writes")
        available.update(manifest.step_outputs(step))
    for index, name in enumerate(manifest.results):
        if name not in available:
            raise BundleError(f"{path}: results[{index}]: no step writes tensor {name!r}")
    if manifest.mesh.num_vertices <= 0 or not manifest.mesh.faces:
        raise BundleError(f"{path}: mesh: empty mesh")
    for index, face in enumerate(manifest.mesh.faces):
        if len(face) != 3 or not all(0 <= vertex < manifest.mesh.num_vertices for vertex in face):
            raise BundleError(f"{path}: mesh.faces[{index}]: not 3 vertex indices below {manifest.mesh.num_vertices}")
    # every file any entry names is listed with its hash, so read_bundle verifies all of them
    named = {stage.file: f"{path}: stages[{index}].file" for index, stage in enumerate(manifest.stages)}
    variant = manifest.variants.int8
    if variant is not None:
        for stage, file in variant.stages.items():
            if stage not in stage_names:
                raise BundleError(f"{path}: variants.int8.stages.{stage}: no stage named {stage!r}")
            named[file] = f"{path}: variants.int8.stages.{stage}"
    if manifest.gpu is not None:
        gpu = manifest.gpu
        if gpu.precision not in ("fp32", "fp16"):
            raise BundleError(f"{path}: gpu.precision: expected fp32 or fp16, got {gpu.precision!r}")
        for stage, graph in gpu.graphs.items():
            if stage not in stage_names:
                raise BundleError(f"{path}: gpu.graphs.{stage}: no stage named {stage!r}")
            named[graph.file] = f"{path}: gpu.graphs.{stage}.file"
        if gpu.tensorrt is not None:
            if gpu.tensorrt.max_people < 1:
                raise BundleError(f"{path}: gpu.tensorrt.max_people: must be at least 1")
            for stage, file in gpu.tensorrt.engines.items():
                if stage not in stage_names:
                    raise BundleError(f"{path}: gpu.tensorrt.engines.{stage}: no stage named {stage!r}")
                named[file] = f"{path}: gpu.tensorrt.engines.{stage}"
    for file in manifest.files:
        _check_relative(file, f"{path}: files.{file}")
        digest = manifest.files[file]
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BundleError(f"{path}: files.{file}: not a sha256 hex digest")
    for file, where in named.items():
        _check_relative(file, where)
        if file not in manifest.files:
            raise BundleError(f"{where}: file {file!r} is not listed (with its sha256) in files")


def _check_unique(names: list, where: str, what: str) -> None:
    seen = set()
    for index, name in enumerate(names):
        if name in seen:
            raise BundleError(f"{where}[{index}].name: {what} name {name!r} is used twice")
        seen.add(name)


def parse_manifest(data, path: str = "manifest") -> Manifest:
    """A manifest dict (parsed JSON) -> Manifest; BundleError naming the JSON path of the first
    missing, mistyped, unknown or inconsistent field. path prefixes the JSON paths in messages."""
    if not isinstance(data, dict):
        raise BundleError(f"{path}: not a bodyrt bundle manifest (expected an object, got {type(data).__name__})")
    if data.get("format") != FORMAT_NAME:
        raise BundleError(f"{path}: format: expected {FORMAT_NAME!r}, got {data.get('format')!r}; "
                          "not a bodyrt bundle manifest")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {version!r}: this bodyrt reads bundle format version "
                          f"{FORMAT_VERSION}; re-export the bundle with this bodyrt: {REEXPORT_COMMAND}")
    try:
        manifest = _parse_object(data, Manifest, "")
    except BundleError as error:
        raise BundleError(f"{path}: {error}") from None
    _check(manifest, path)
    return manifest
