"""The typed manifest (format 2): a fuzz of a real manifest, the file table's holes, old bundles.

Every field of a real manifest (the session bundle's, plus an int8 variant and a GPU section with
engines) is removed, retyped and given an unknown sibling in turn; each case must give a BundleError
whose message names the field's JSON path (or parse, where the change is still a valid manifest),
never another exception.
"""

import copy
import json
import re
import shutil

import pytest

from bodyrt.errors import BundleError
from bodyrt.runtime.bundle import read_bundle
from bodyrt.runtime.manifest import FORMAT_VERSION, Manifest, parse_manifest

FAKE_SHA = "0" * 64
# Objects whose keys are data (file names, stage names, tool names), not fields: entries may come and go.
MAPS = [r"tools", r"files", r"variants\.int8\.stages", r"variants\.int8\.tools",
        r"variants\.int8\.calibration_deviation(\.[^.\[]+)?", r"gpu\.graphs", r"gpu\.tensorrt\.engines"]
# Fields that may be left out.
OPTIONAL = [r"variants", r"variants\.int8", r"gpu", r"gpu\.tensorrt"]
# Values whose type admits the retyped value too: shape dimensions and tool versions are int or str.
EITHER_INT_OR_STR = [r".*\.shape\[\d+\]", r"tools\.[^.]+"]


def _matches(patterns, path: str) -> bool:
    return any(re.fullmatch(pattern, path) for pattern in patterns)


def _join(path: str, key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def full_manifest(bundle_dir) -> dict:
    """The session bundle's manifest with two faces (fast to parse) and every optional section."""
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["mesh"]["faces"] = data["mesh"]["faces"][:2]
    stages = [stage["name"] for stage in data["stages"]]
    data["variants"] = {"int8": {
        "stages": {"body": "body.int8.onnx"}, "method": "QDQ", "created": "2026-01-01T00:00:00Z",
        "calibration": {"folder": "calibration", "images": 3, "skipped": 0},
        "calibration_deviation": {"body": {"body_params": 0.01}}, "tools": {"onnxruntime": "1.0"}}}
    data["gpu"] = {"precision": "fp16",
                   "graphs": {"body": {"file": "body.fp16.onnx", "precision": "fp16",
                                       "inputs": data["stages"][0]["inputs"], "outputs": data["stages"][0]["outputs"]}},
                   "tensorrt": {"tensorrt_version": "10.0", "gpu_name": "GPU", "compute_capability": "8.6",
                                "precision": "fp16", "max_people": 4, "opt_people": 1,
                                "engines": {stage: f"{stage}.fp16.engine" for stage in stages}}}
    for file in ["body.int8.onnx", "body.fp16.onnx", *(f"{stage}.fp16.engine" for stage in stages)]:
        data["files"][file] = FAKE_SHA
    return data


def nodes(value, path=""):
    """(path, container, key) of every value in the JSON tree; lists: first and last entry only."""
    if isinstance(value, dict):
        for key in list(value):
            yield _join(path, key), value, key
            yield from nodes(value[key], _join(path, key))
    elif isinstance(value, list) and value:
        for index in sorted({0, len(value) - 1}):
            yield _join(path, index), value, index
            yield from nodes(value[index], _join(path, index))


def wrong_value(value):
    """A value of another JSON type than `value`'s, never valid where `value` is."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        return "7"
    if isinstance(value, str):
        return 3.5
    if isinstance(value, list):
        return "text"
    return [1]


def at(data, path_keys):
    for key in path_keys:
        data = data[key]
    return data


def key_paths(value, keys=()):
    """Like nodes(), but as key tuples, so each case mutates its own deep copy."""
    if isinstance(value, dict):
        for key in list(value):
            yield (*keys, key)
            yield from key_paths(value[key], (*keys, key))
    elif isinstance(value, list) and value:
        for index in sorted({0, len(value) - 1}):
            yield (*keys, index)
            yield from key_paths(value[index], (*keys, index))


def path_of(keys) -> str:
    path = ""
    for key in keys:
        path = _join(path, key)
    return path


def parse_case(data, path: str, allowed_to_parse: bool):
    try:
        parse_manifest(data)
    except BundleError as error:
        assert path in str(error) or (path.split(".")[-1] in str(error)), (path, str(error))
        return
    except Exception as error:  # noqa: BLE001 - exactly what the fuzz is for
        pytest.fail(f"{path}: {type(error).__name__} instead of a BundleError: {error}")
    assert allowed_to_parse, f"{path}: the changed manifest parsed"


@pytest.fixture(scope="module")
def manifest_data(bundle_dir):
    data = full_manifest(bundle_dir)
    assert isinstance(parse_manifest(copy.deepcopy(data)), Manifest)  # the unchanged one is valid
    return data


def test_to_json_round_trips(manifest_data):
    manifest = parse_manifest(copy.deepcopy(manifest_data))
    assert manifest.to_json() == manifest_data
    assert parse_manifest(manifest.to_json()) == manifest


def test_fuzz_remove_every_field(manifest_data):
    cases = 0
    for keys in key_paths(manifest_data):
        data = copy.deepcopy(manifest_data)
        container = at(data, keys[:-1])
        del container[keys[-1]]
        path = path_of(keys)
        parent = path_of(keys[:-1])
        in_map = _matches(MAPS, parent)
        in_list = isinstance(keys[-1], int)
        # a list entry or a map entry may go (the rest stays consistent or names what broke)
        parse_case(data, path if not (in_map or in_list) else "", in_map or in_list or _matches(OPTIONAL, path))
        cases += 1
    assert cases > 150


def test_fuzz_retype_every_field(manifest_data):
    cases = 0
    for keys in key_paths(manifest_data):
        data = copy.deepcopy(manifest_data)
        container = at(data, keys[:-1])
        container[keys[-1]] = wrong_value(container[keys[-1]])
        path = path_of(keys)
        parse_case(data, path, _matches(EITHER_INT_OR_STR, path))
        cases += 1
    assert cases > 150


def test_fuzz_add_a_field_to_every_object(manifest_data):
    cases = 0
    objects = [()] + [keys for keys in key_paths(manifest_data) if isinstance(at(manifest_data, keys), dict)]
    for keys in objects:
        data = copy.deepcopy(manifest_data)
        at(data, keys)["unexpected_field"] = 1
        path = _join(path_of(keys), "unexpected_field")
        parse_case(data, path, _matches(MAPS, path_of(keys)))
        cases += 1
    assert cases > 30


@pytest.mark.parametrize("change,message", [
    (lambda data: data.update(files={}), r"stages\[0\]\.file: file 'body\.onnx' is not listed"),
    (lambda data: data["files"].pop("hand.onnx"), r"stages\[1\]\.file: file 'hand\.onnx' is not listed"),
    (lambda data: data["gpu"]["tensorrt"]["engines"].update(hand="../hand.engine"),
     r"gpu\.tensorrt\.engines\.hand: '\.\./hand\.engine' is not a file name inside the bundle"),
    (lambda data: data["stages"][0].update(file="/etc/passwd"), r"stages\[0\]\.file: '/etc/passwd' is not"),
    (lambda data: data["files"].update({"../x.onnx": FAKE_SHA}), r"files\.\.\./x\.onnx"),
    (lambda data: data["files"].update({"x.onnx": "abc"}), r"files\.x\.onnx: not a sha256"),
    (lambda data: data["steps"][2].update(name="body"), r"steps\[2\]\.name: step name 'body' is used twice"),
    (lambda data: data["steps"].insert(0, data["steps"].pop(1)), r"steps\[0\]: reads tensor 'body_crops'"),
    (lambda data: data["results"].append("nothing"), r"results\[\d+\]: no step writes tensor 'nothing'"),
    (lambda data: data.update(fp32_stages=["merger"]), r"fp32_stages\[0\]: no stage named 'merger'"),
    (lambda data: data["steps"][0].update(op="crop"), r"steps\[0\]\.op: expected one of"),
    (lambda data: data["preprocessing"].update(mean=[0.5]), r"preprocessing\.mean: expected 3 values"),
    (lambda data: data["mesh"]["faces"][0].__setitem__(0, 10 ** 6), r"mesh\.faces\[0\]"),
    (lambda data: data["variants"]["int8"]["stages"].update(torso="torso.onnx"),
     r"variants\.int8\.stages\.torso: no stage named 'torso'"),
])
def test_inconsistent_manifests_name_the_field(manifest_data, change, message):
    data = copy.deepcopy(manifest_data)
    change(data)
    with pytest.raises(BundleError, match=message):
        parse_manifest(data)


def test_format_1_bundle_is_refused_with_the_reexport_command(bundle_dir, tmp_path):
    copy_dir = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy_dir)
    data = json.loads((copy_dir / "manifest.json").read_text())
    data["format_version"] = 1
    (copy_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=rf"manifest\.json.*format_version 1.*reads bundle format version {FORMAT_VERSION}.*"
                                          r"bodyrt export --checkpoint"):
        read_bundle(copy_dir)


def test_an_unlisted_file_cannot_bypass_the_hashes(bundle_dir, tmp_path):
    """A manifest whose file table leaves a stage out is refused before any graph is opened."""
    copy_dir = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy_dir)
    data = json.loads((copy_dir / "manifest.json").read_text())
    del data["files"]["merge.onnx"]
    (copy_dir / "merge.onnx").write_bytes(b"not the exported graph")
    (copy_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"manifest\.json: stages\[3\]\.file: file 'merge\.onnx' is not listed"):
        read_bundle(copy_dir)
