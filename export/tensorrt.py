"""GPU artefacts of a bundle: float16 ONNX graphs and TensorRT engines built from them.

    bodyrt export ... --engine tensorrt --precision fp16            # export, then build on this machine
    python -m bodyrt.export.tensorrt --bundle BUNDLE --precision fp16  # (re)build an existing bundle's

Precision lives in the ONNX graph itself. TensorRT 11 networks are always strongly typed (the FP16
builder flag is gone) and TensorRT 10 is driven the same way, so for fp16 the graph is rewritten
before the build: the convolutional backbones (over 99% of the FLOPs) compute in float16, and
everything from the pooled feature on (regressors, SMPL-X, part boxes) stays float32, because
regressor updates and metre-scale vertices lose millimetres in float16. The crop inputs become
float16 (the crop kernel writes half directly); every other input and output stays float32. The
rewritten graphs go into the bundle as <stage>.fp16.onnx, used by both GPU backends.

Engines are built through Polygraphy's TensorRT loaders (NVIDIA's own, tested on GPUs): a strongly
typed network from the ONNX file, one optimisation profile over the person axis (1 .. max_people),
TF32 off (float32 layers stay float32), build_serialized_network, and a timing cache kept in the
user cache directory and reused by every later build. The manifest records
each engine file (so read_bundle's sha256 check covers it) with the TensorRT version, GPU name and
compute capability it was built with; the runtime compares those before deserialising.

Nothing here imports torch: engines can be rebuilt on a deployment machine from the bundle alone.
"""

import argparse
import ast
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from bodyrt.errors import BackendUnavailableError, BodyrtError, ExportError, InputError
from bodyrt.export.out_folder import require_own_bundle
from bodyrt.files import apply_umask
from bodyrt.runtime.bundle import MANIFEST_NAME, read_bundle, sha256_of
from bodyrt.runtime.manifest import parse_manifest

log = logging.getLogger("bodyrt")

ENGINES = ("onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16")
# Module scopes (as the exporter records them in each node's name_scopes) computed in float16.
FP16_SCOPES = ("body_network.backbone", "network.backbone")
# Ops that only move data: they follow their input into float16 (the crops' reshape before a backbone).
LAYOUT_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity")
DEFAULT_MAX_PEOPLE = 8
OPT_PEOPLE = 1
WORKSPACE_BYTES = 2 << 30


# ---------------------------------------------------------------------------------------------
# float16 graphs


def _name_scopes(node) -> list:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            return ast.literal_eval(prop.value)
    return []


def _elem_types(graph) -> dict:
    """Tensor name -> ONNX element type, from inputs, outputs, value_info and initializers."""
    types = {init.name: init.data_type for init in graph.initializer}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        types[value.name] = value.type.tensor_type.elem_type
    return types


def _typed_slots(node, opset: int) -> tuple:
    """(input indices, output indices) bound to the type variable of the node's first output.

    Those switch to float16 with the node; the others (Resize's scales, shapes, indices, MaxPool's
    Indices output) keep their own types.
    """
    from onnx import defs

    schema = defs.get_schema(node.op_type, opset, node.domain)
    type_var = schema.outputs[0].type_str

    def slots(formals, names):
        return [index for index, name in enumerate(names)
                if name and formals[min(index, len(formals) - 1)].type_str == type_var]

    return slots(schema.inputs, node.input), slots(schema.outputs, node.output)


def float16_region(graph, opset: int, scopes, half_inputs) -> dict:
    """The nodes to compute in float16, {node index: (typed input slots, typed output slots)}.

    Float nodes in `scopes`, and layout ops fed by a float16 tensor, walking the nodes in their
    (topological) order; half_inputs are graph inputs that arrive as float16.
    """
    from onnx import TensorProto

    types = _elem_types(graph)
    half = set(half_inputs)
    region = {}
    for index, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx") or not node.output or types.get(node.output[0]) != TensorProto.FLOAT:
            continue
        in_scope = any(scope in scopes for scope in _name_scopes(node))
        follows_half = node.op_type in LAYOUT_OPS and node.input[0] in half
        if in_scope or follows_half:
            region[index] = _typed_slots(node, opset)
            half.update(node.output[slot] for slot in region[index][1])
    return region


def convert_to_fp16(model, scopes=FP16_SCOPES, half_inputs=()):
    """A float32 ModelProto -> (float16 ModelProto, number of nodes now in float16).

    Nodes in `scopes` (and layout ops fed by float16) compute in float16: their float initializers
    are stored as float16 and Cast nodes are inserted where a tensor crosses between the float16
    region and the rest. Graph inputs named in half_inputs become float16 inputs; every other input
    and every output keeps its type. The input model is not modified.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    graph = model_copy.graph
    opset = next(entry.version for entry in model_copy.opset_import if entry.domain in ("", "ai.onnx"))
    unknown = set(half_inputs) - {value.name for value in graph.input}
    if unknown:
        raise ExportError(f"graph {graph.name!r} has no inputs {sorted(unknown)} to make float16")
    region = float16_region(graph, opset, scopes, half_inputs)
    if not region:
        return model_copy, 0

    initializers = {init.name: init for init in graph.initializer}
    uses = {}  # tensor -> [(node index, input slot)]
    for index, node in enumerate(graph.node):
        for slot, name in enumerate(node.input):
            uses.setdefault(name, []).append((index, slot))

    def only_typed_uses_in_region(name):
        return all(index in region and slot in region[index][0] for index, slot in uses[name])

    half = set(half_inputs)
    for value in graph.input:
        if value.name in half:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16

    casts = {}  # (tensor, target type) -> cast output name
    nodes = []

    def cast(name, to):
        if (name, to) not in casts:
            suffix = "fp16" if to == TensorProto.FLOAT16 else "fp32"
            casts[name, to] = f"{name}__{suffix}"
            nodes.append(helper.make_node("Cast", [name], [casts[name, to]], name=f"cast_{name}__{suffix}", to=to))
        return casts[name, to]

    for index, node in enumerate(graph.node):
        typed_inputs, typed_outputs = region.get(index, ((), ()))
        for slot, name in enumerate(node.input):
            if not name:
                continue
            wants_half = slot in typed_inputs
            if wants_half and name not in half and name in initializers and only_typed_uses_in_region(name):
                values = numpy_helper.to_array(initializers[name])
                if values.size and np.max(np.abs(values)) > np.finfo(np.float16).max:
                    raise ExportError(f"initializer {name} of node {node.name} exceeds the float16 range "
                                      f"(|max| = {np.max(np.abs(values)):.3g}); keep this scope in float32")
                initializers[name].CopyFrom(numpy_helper.from_array(values.astype(np.float16), name))
                half.add(name)
            elif wants_half and name not in half:
                node.input[slot] = cast(name, TensorProto.FLOAT16)
            elif not wants_half and name in half:
                node.input[slot] = cast(name, TensorProto.FLOAT)
        half.update(node.output[slot] for slot in typed_outputs)
        nodes.append(node)

    for value in graph.output:
        if value.name in half:  # the producer writes a renamed float16 tensor; a Cast restores the name
            renamed = f"{value.name}__fp16_out"
            for node in nodes:
                node.output[:] = [renamed if name == value.name else name for name in node.output]
                node.input[:] = [renamed if name == value.name else name for name in node.input]
            nodes.append(helper.make_node("Cast", [renamed], [value.name], name=f"cast_{value.name}__out",
                                          to=TensorProto.FLOAT))

    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    model_copy = onnx.shape_inference.infer_shapes(model_copy, strict_mode=True)
    onnx.checker.check_model(model_copy, full_check=True)
    return model_copy, len(region)


def graph_specs(model) -> dict:
    """{"inputs": [...], "outputs": [...]}: name, shape (symbolic axes by name) and numpy dtype name."""
    from onnx import helper

    def spec(value):
        tensor_type = value.type.tensor_type
        return {"name": value.name, "shape": [d.dim_param or d.dim_value for d in tensor_type.shape.dim],
                "dtype": helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name}

    return {"inputs": [spec(v) for v in model.graph.input], "outputs": [spec(v) for v in model.graph.output]}


def crop_inputs(manifest: dict) -> set:
    """Names of the tensors the manifest's crop steps write: the inputs that arrive as float16."""
    names = set()
    for step in manifest["steps"]:
        if step["op"] == "body_crop":
            names.add(step["crops"])
        elif step["op"] == "part_crops":
            names.add(step["output"])
    return names


def write_gpu_graphs(source_dir: Path, out_dir: Path, manifest: dict, precision: str) -> dict:
    """The graph each stage runs on a GPU: stage -> {"file", "precision", "inputs", "outputs"}.

    fp32: the stage's own ONNX file. fp16: <stage>.fp16.onnx written to out_dir, or the stage's own
    file when none of its nodes is in a float16 scope (the merge stage).
    """
    import onnx

    graphs = {}
    half_inputs = crop_inputs(manifest)
    for stage in manifest["stages"]:
        entry = {"file": stage["file"], "precision": "fp32", "inputs": stage["inputs"], "outputs": stage["outputs"]}
        if precision == "fp16":
            model = onnx.load(str(Path(source_dir) / stage["file"]))
            names = {value.name for value in model.graph.input}
            converted, count = convert_to_fp16(model, half_inputs=sorted(half_inputs & names))
            if count:
                file = f"{stage['name']}.fp16.onnx"
                _save_atomically(Path(out_dir) / file, converted.SerializeToString())
                entry = {"file": file, "precision": "fp16", **graph_specs(converted)}
                log.info("stage %s: %d nodes in float16 -> %s", stage["name"], count, file)
        graphs[stage["name"]] = entry
    return graphs


def _save_atomically(path: Path, data: bytes) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        apply_umask(temporary)  # mkstemp makes 0600 files
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


# ---------------------------------------------------------------------------------------------
# TensorRT engines


def timing_cache_path(platform: dict) -> Path:
    """One timing cache per TensorRT version and GPU, in the user cache directory."""
    from bodyrt.kernels.build import cache_dir

    gpu = "".join(c if c.isalnum() else "-" for c in platform["gpu_name"]).strip("-")
    name = f"timing-{platform['tensorrt_version']}-{gpu}-sm{platform['compute_capability']}.cache"
    return cache_dir() / "tensorrt" / name


def import_polygraphy_trt():
    """polygraphy.backend.trt, or BackendUnavailableError saying what to install."""
    try:
        from polygraphy.backend import trt as polygraphy_trt
    except ImportError as error:
        raise BackendUnavailableError(f"building TensorRT engines needs Polygraphy ({error}); "
                                      f'pip install "bodyrt[check]" (it comes with gpu-cu12 and gpu-cu13)') from None
    return polygraphy_trt


def person_profile(network, max_people: int, opt_people: int, polygraphy_trt):
    """A Polygraphy Profile over the person axis (axis 0 of every input): 1 .. max_people, tuned at opt_people."""
    profile = polygraphy_trt.Profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        per_person = tuple(tensor.shape)[1:]
        profile.add(tensor.name, min=(1, *per_person), opt=(opt_people, *per_person), max=(max_people, *per_person))
    return profile


def use_timing_cache(config, timing_cache: bytes, onnx_path) -> None:
    """Give the builder config the timing cache; a cache TensorRT refuses (another GPU or version,
    or damaged) is replaced by an empty one with a warning, never silently ignored."""
    if config.set_timing_cache(config.create_timing_cache(timing_cache), False):
        return
    log.warning("%s: TensorRT refused the timing cache (another GPU or TensorRT version, or damaged); "
                "building with an empty one", onnx_path)
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise ExportError(f"{onnx_path}: TensorRT refused even an empty timing cache")


def build_engine(onnx_path: Path, engine_path: Path, max_people: int, opt_people: int = OPT_PEOPLE,
                 timing_cache: bytes = b"", workspace_bytes: int = WORKSPACE_BYTES) -> bytes:
    """Build one engine from a (possibly float16) ONNX graph with Polygraphy; returns the updated timing cache.

    Polygraphy's loaders do the TensorRT calls: NetworkFromOnnxPath (strongly typed: the graph's
    own types decide the precision, as TensorRT 11 requires), CreateConfig (the person-axis
    profile, TF32 off so float32 layers stay float32, the workspace limit) and
    EngineBytesFromNetwork (build_serialized_network). Every input's axis 0 is the person axis:
    the profile spans 1 .. max_people (opt_people is what TensorRT tunes for). The timing cache is
    set here because Polygraphy ignores set_timing_cache's result. Raises ExportError with
    TensorRT's messages when the graph does not parse or the build fails.
    """
    from bodyrt.runtime.tensorrt_backend import import_tensorrt

    trt = import_tensorrt()
    polygraphy_trt = import_polygraphy_trt()
    from polygraphy.exception import PolygraphyException

    try:
        builder, network, parser = polygraphy_trt.NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)()
        profile = person_profile(network, max_people, opt_people, polygraphy_trt)
        config = polygraphy_trt.CreateConfig(tf32=False, profiles=[profile],
                                             memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_bytes})
        config = config(builder, network)
        use_timing_cache(config, timing_cache, onnx_path)
        plan = polygraphy_trt.EngineBytesFromNetwork((builder, network, parser), config=config)()
    except PolygraphyException as error:
        raise ExportError(f"{onnx_path}: TensorRT could not build an engine: {error} (see the TensorRT log "
                          "above)") from None
    _save_atomically(Path(engine_path), bytes(memoryview(plan)))
    return bytes(memoryview(config.get_timing_cache().serialize()))


def build_engines(graph_paths: dict, out_dir: Path, precision: str, platform: dict,
                  max_people: int = DEFAULT_MAX_PEOPLE) -> dict:
    """Build <stage>.<precision>.engine in out_dir from each stage's graph; returns the manifest entry.

    graph_paths: stage -> ONNX file. The timing cache of this TensorRT version and GPU is read
    before the first build, handed from build to build, and saved after the last.
    """
    cache_path = timing_cache_path(platform)
    timing_cache = cache_path.read_bytes() if cache_path.is_file() else b""
    engines = {}
    for stage, graph_path in graph_paths.items():
        engine_file = f"{stage}.{precision}.engine"
        timing_cache = build_engine(graph_path, Path(out_dir) / engine_file, max_people, timing_cache=timing_cache)
        engines[stage] = engine_file
        log.info("stage %s: TensorRT engine %s built", stage, engine_file)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomically(cache_path, timing_cache)
    return {**platform, "precision": precision, "max_people": max_people, "opt_people": OPT_PEOPLE,
            "engines": engines}


def check_gpu_export(engine: str, precision: str, probe: bool = True):
    """Check the arguments; for tensorrt (with probe) also that TensorRT, cuda-python and a GPU are here.

    Returns this machine's platform for a probed tensorrt (else None), so a missing piece fails
    before the slow export with BackendUnavailableError naming it.
    """
    if engine not in ENGINES:
        raise InputError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if precision == "bf16":
        raise InputError("--precision bf16 is not an export precision: the exported graphs are fp32 and bf16 is "
                         "chosen at run time (bodyrt run --backend openvino --precision bf16)")
    if precision == "int8":
        raise InputError("--precision int8 is not an export precision: make the int8 variant of an exported "
                         "bundle with bodyrt quantize --bundle BUNDLE --calibration IMAGE_FOLDER")
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if engine == "tensorrt" and probe:
        from bodyrt.runtime.tensorrt_backend import current_platform

        return current_platform()
    return None


def add_gpu_artefacts(source_dir: Path, out_dir: Path, manifest: dict, engine: str = "onnx",
                      precision: str = "fp32", max_people: int = DEFAULT_MAX_PEOPLE, platform=None) -> list:
    """Write the GPU graphs (fp16) and engines (tensorrt) for a bundle's manifest; returns the new files.

    Stage ONNX files are read from source_dir, new files written to out_dir. The manifest gets a
    "gpu" section and the new files' sha256 in "files". Nothing is added for onnx + fp32.
    platform (TensorRT version, GPU name, compute capability) defaults to this machine's.
    """
    probed = check_gpu_export(engine, precision, probe=platform is None)
    platform = platform or probed
    if engine == "onnx" and precision == "fp32":
        return []
    graphs = write_gpu_graphs(source_dir, out_dir, manifest, precision)
    gpu = {"precision": precision, "graphs": graphs}
    if engine == "tensorrt":
        graph_paths = {}
        for stage, graph in graphs.items():  # new fp16 graphs are in out_dir, unchanged ones in source_dir
            written = Path(out_dir) / graph["file"]
            graph_paths[stage] = written if written.is_file() else Path(source_dir) / graph["file"]
        gpu["tensorrt"] = build_engines(graph_paths, out_dir, precision, platform, max_people)
    new_files = sorted({graph["file"] for graph in graphs.values()} - {stage["file"] for stage in manifest["stages"]})
    new_files += sorted(gpu.get("tensorrt", {}).get("engines", {}).values())
    manifest["gpu"] = gpu
    manifest.setdefault("files", {}).update({file: sha256_of(Path(out_dir) / file) for file in new_files})
    return new_files


def build_gpu_artefacts(bundle_dir, engine: str = "tensorrt", precision=None, max_people: int = DEFAULT_MAX_PEOPLE,
                        platform=None) -> Path:
    """Add (or rebuild) a bundle's GPU graphs and engines on this machine, from its own ONNX graphs.

    precision defaults to the bundle's current GPU precision. New files are built in a staging
    directory and moved in only when every build succeeded, and the manifest is replaced last, so a
    failed build leaves the bundle as it was.
    """
    bundle = read_bundle(bundle_dir)
    require_own_bundle(bundle.path)  # GPU graphs, engines and the manifest are written into this folder
    manifest = bundle.manifest.to_json()  # edited as JSON, checked by parse_manifest before it is written
    old_gpu = manifest.pop("gpu", {})
    precision = precision or old_gpu.get("precision", "fp32")
    stage_files = {stage["file"] for stage in manifest["stages"]}
    old_files = {graph["file"] for graph in old_gpu.get("graphs", {}).values()} - stage_files
    old_files |= set(old_gpu.get("tensorrt", {}).get("engines", {}).values())
    for file in old_files:
        manifest["files"].pop(file, None)
    staging = Path(tempfile.mkdtemp(prefix=".gpu-partial-", dir=bundle.path))
    try:
        new_files = add_gpu_artefacts(bundle.path, staging, manifest, engine, precision, max_people, platform)
        for file in new_files:
            apply_umask(staging / file)
            os.replace(staging / file, bundle.path / file)
        text = json.dumps(parse_manifest(manifest, f"{bundle.path / MANIFEST_NAME} (new)").to_json())
        _save_atomically(bundle.path / MANIFEST_NAME, text.encode())
        for file in old_files - set(new_files):
            (bundle.path / file).unlink(missing_ok=True)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    return bundle.path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bodyrt.export.tensorrt",
                                     description="(Re)build a bundle's TensorRT engines on this machine.")
    parser.add_argument("--bundle", required=True, help="bundle directory (updated in place)")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: the bundle's current GPU precision")
    parser.add_argument("--engine", choices=ENGINES, default="tensorrt", help="default: %(default)s")
    parser.add_argument("--max-people", type=int, default=DEFAULT_MAX_PEOPLE,
                        help="largest person batch the engines accept (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bodyrt: %(message)s")
    try:
        path = build_gpu_artefacts(args.bundle, args.engine, args.precision, args.max_people)
    except BodyrtError as error:
        print(f"bodyrt: error: {error}", file=sys.stderr)
        return 1
    print(f"bodyrt: rebuilt the GPU artefacts of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
