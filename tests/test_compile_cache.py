"""The OpenVINO compile cache: person counts share one entry, the size bound removes the least
recently used entries first, two processes can fill one cache, `bodyrt info` reports it.

The graphs are tiny (a matmul with a seeded weight, person axis dynamic), so these tests need no bundle.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")

from bodyrt.cli import main  # noqa: E402
from bodyrt.errors import InputError  # noqa: E402
from bodyrt.runtime import compile_cache  # noqa: E402
from bodyrt.runtime.manifest import TensorSpec  # noqa: E402
from bodyrt.runtime.openvino_backend import OpenVinoRunner  # noqa: E402

FEATURES = 64
SPECS = (TensorSpec("features", ("people", FEATURES), "float32"),)


def write_graph(path, seed: int, width: int = 256):
    """features (people, 64) -> scores (people, width) = features @ W, W seeded; returns W."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(seed).normal(size=(FEATURES, width)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "weight"], ["scores"])], f"graph{seed}",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["people", FEATURES])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["people", width])],
        [numpy_helper.from_array(weight, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return weight


def runner(graph, cache, shapes=None):
    return OpenVinoRunner(graph, threads=1, precision="fp32", input_specs=SPECS, cache_dir=cache,
                          shapes=shapes).activate()


def people(count: int):
    return {"features": np.random.default_rng(count).normal(size=(count, FEATURES)).astype(np.float32)}


def blobs(cache):
    return sorted(path.name for path in cache.glob("*.blob"))


def test_person_counts_from_two_on_share_one_entry(tmp_path):
    graph = tmp_path / "stage.onnx"
    weight = write_graph(graph, seed=0)
    cache = tmp_path / "cache"
    first = runner(graph, cache)
    assert len(blobs(cache)) == 1  # the one-person static model, compiled at activation
    for count in (2, 3, 5):
        np.testing.assert_allclose(first.infer(people(count))["scores"], people(count)["features"] @ weight,
                                   rtol=1e-4, atol=1e-4)
    assert len(blobs(cache)) == 2  # 2, 3 and 5 people: one dynamic entry between them
    again = runner(graph, cache)
    for count in (1, 4):
        np.testing.assert_allclose(again.infer(people(count))["scores"], people(count)["features"] @ weight,
                                   rtol=1e-4, atol=1e-4)
    assert len(blobs(cache)) == 2


def test_dynamic_shapes_give_one_entry_for_every_person_count(tmp_path, monkeypatch):
    graph = tmp_path / "stage.onnx"
    weight = write_graph(graph, seed=0)
    cache = tmp_path / "cache"
    monkeypatch.setenv("BODYRT_OPENVINO_SHAPES", "dynamic")
    model = runner(graph, cache)
    for count in (1, 2, 3):
        np.testing.assert_allclose(model.infer(people(count))["scores"], people(count)["features"] @ weight,
                                   rtol=1e-4, atol=1e-4)
    assert len(blobs(cache)) == 1
    assert list(model.compiled) == ["dynamic"]
    monkeypatch.setenv("BODYRT_OPENVINO_SHAPES", "static")
    with pytest.raises(InputError, match="BODYRT_OPENVINO_SHAPES must be one of static1, dynamic"):
        runner(graph, cache)


def test_the_size_bound_removes_the_least_recently_used_entries(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    graphs = [tmp_path / f"stage{seed}.onnx" for seed in range(4)]
    for seed, graph in enumerate(graphs):
        write_graph(graph, seed=seed)
    runner(graphs[0], cache, shapes="dynamic")
    entry = compile_cache.cache_entries(cache)[0].size  # the same for every graph: same shapes
    monkeypatch.setenv("BODYRT_OPENVINO_CACHE_LIMIT", str(int(3.5 * entry)))  # room for three entries
    names = {}
    for age, graph in enumerate(graphs[:3]):
        runner(graph, cache, shapes="dynamic")
        (name,) = set(blobs(cache)) - set(names.values())
        names[graph.stem] = name
        os.utime(cache / name, (1000 + age, 1000 + age))  # stage0 oldest ... stage2 newest
    assert len(names) == 3 and len(blobs(cache)) == 3
    runner(graphs[0], cache, shapes="dynamic")  # a cache hit makes stage0 the most recently used
    runner(graphs[3], cache, shapes="dynamic")  # a fourth entry: the least recently used (stage1) goes
    kept = blobs(cache)
    assert names["stage1"] not in kept and {names["stage0"], names["stage2"]} <= set(kept) and len(kept) == 3
    assert not (cache / (names["stage1"] + ".sha256")).exists()
    assert compile_cache.cache_usage(cache)["bytes"] <= 3.5 * entry
    monkeypatch.setenv("BODYRT_OPENVINO_CACHE_LIMIT", "0")  # nothing is stored; what is there stays
    write_graph(tmp_path / "stage4.onnx", seed=4)
    runner(tmp_path / "stage4.onnx", cache, shapes="dynamic")
    assert blobs(cache) == kept


@pytest.mark.parametrize("text, expected", [("4G", 4 << 30), ("500M", 500 << 20), ("2.5GB", int(2.5 * (1 << 30))),
                                            ("1048576", 1 << 20), ("0", 0), ("12k", 12 << 10), ("1GiB", 1 << 30)])
def test_cache_limit_sizes(text, expected):
    assert compile_cache.parse_size(text, "limit") == expected


def test_a_bad_cache_limit_names_the_variable(tmp_path, monkeypatch):
    graph = tmp_path / "stage.onnx"
    write_graph(graph, seed=0)
    monkeypatch.setenv("BODYRT_OPENVINO_CACHE_LIMIT", "lots")
    with pytest.raises(InputError, match="BODYRT_OPENVINO_CACHE_LIMIT must be a size"):
        runner(graph, tmp_path / "cache")


def test_two_processes_share_one_bounded_cache(tmp_path):
    """Two processes fill one cache at once, each with its own graphs, under a bound of three entries:
    every entry left is complete (its sha256 matches), the bound holds, and nobody failed."""
    cache = tmp_path / "cache"
    for seed in range(8):
        write_graph(tmp_path / f"stage{seed}.onnx", seed=seed)
    runner(tmp_path / "stage0.onnx", cache, shapes="dynamic")
    entry = compile_cache.cache_entries(cache)[0].size
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from bodyrt.runtime.manifest import TensorSpec
        from bodyrt.runtime.openvino_backend import OpenVinoRunner
        specs = (TensorSpec("features", ("people", {FEATURES}), "float32"),)
        for round_ in range(3):
            for seed in sys.argv[1:]:
                model = OpenVinoRunner(r"{tmp_path}/stage" + seed + ".onnx", threads=1, input_specs=specs,
                                       cache_dir=r"{cache}", shapes="dynamic").activate()
                model.infer({{"features": np.ones((2, {FEATURES}), np.float32)}})
    """)
    environment = {**os.environ, "BODYRT_OPENVINO_CACHE_LIMIT": str(int(3.5 * entry))}
    workers = [subprocess.Popen([sys.executable, "-c", script, *seeds], env=environment, stderr=subprocess.PIPE,
                                text=True) for seeds in (["1", "2", "3"], ["4", "5", "6", "7"])]
    for worker in workers:
        _, errors = worker.communicate(timeout=300)
        assert worker.returncode == 0, errors
        assert "Traceback" not in errors and "not used" not in errors and "unusable" not in errors, errors
    entries = compile_cache.cache_entries(cache)
    assert 1 <= len(entries) <= 3
    assert compile_cache.cache_usage(cache)["bytes"] <= 3.5 * entry
    for item in entries:
        import hashlib

        assert hashlib.sha256(item.blob.read_bytes()).hexdigest() == compile_cache.hash_file(item.blob).read_text()
    assert not list(cache.glob("*.partial"))


def test_info_prints_version_cpu_backends_and_cache(tmp_path, monkeypatch, capsys):
    from bodyrt import __version__

    graph = tmp_path / "stage.onnx"
    write_graph(graph, seed=0)
    monkeypatch.setenv("BODYRT_CACHE_DIR", str(tmp_path / "root"))
    monkeypatch.setenv("BODYRT_OPENVINO_CACHE_LIMIT", "3G")
    runner(graph, None, shapes="dynamic")  # the default location under BODYRT_CACHE_DIR
    size = sum(path.stat().st_size for path in (tmp_path / "root" / "openvino").iterdir())
    (tmp_path / "root" / "openvino-native").mkdir()
    (tmp_path / "root" / "openvino-native" / "body-0.blob").write_bytes(b"x" * 3000)  # the C library's own
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"bodyrt {__version__}" in text
    assert str(tmp_path / "root" / "openvino") in text
    assert "1 compiled model" in text and "limit 3.0 GiB" in text
    assert f"{tmp_path / 'root' / 'openvino-native'}, 2.9 KiB (not bounded)" in text
    assert "openvino" in text and "onnxruntime" in text
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == __version__
    assert report["openvino_cache"]["bytes"] == size and report["openvino_cache"]["entries"] == 1
    assert report["openvino_cache"]["limit_bytes"] == 3 << 30
    assert report["native_cache"]["bytes"] == 3000
    assert report["cpu"]["model"] and set(report["cpu"]["features"]) >= {"avx2", "avx512f", "amx_tile"}
    assert "openvino" in report["backends"]["available"]
    monkeypatch.setenv("BODYRT_OPENVINO_CACHE_LIMIT", "lots")
    assert main(["info"]) == 1
    assert "BODYRT_OPENVINO_CACHE_LIMIT must be a size" in capsys.readouterr().err
