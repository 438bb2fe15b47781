"""examples/python/run_image.py, the Python API example, run as a user runs it: against the session's
synthetic bundle, two people. Its meshes must be the ones `bodyrt run` writes, and its parameters must
give the same mesh through the smplx package."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from bodyrt.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "python" / "run_image.py"


def obj_vertices(path) -> np.ndarray:
    return np.array([line.split()[1:] for line in Path(path).read_text().splitlines() if line.startswith("v ")],
                    dtype=np.float64)


@pytest.fixture(scope="module")
def scene(demo_files, tmp_path_factory):
    from bodyrt.export.fixtures.scenes import sample_scene
    from bodyrt.images import save_png

    folder = tmp_path_factory.mktemp("example")
    image, box = sample_scene(demo_files[1], seed=5, size=(360, 640))
    save_png(folder / "scene.png", image)
    return folder / "scene.png", [box[0].tolist(), [420.0, 60.0, 560.0, 330.0]]


def test_the_python_example_writes_the_meshes_bodyrt_run_writes(bundle_dir, demo_files, scene, tmp_path):
    import smplx

    image, boxes = scene
    box_arguments = [value for box in boxes for value in ("--box", *map(str, box))]
    answer = subprocess.run([sys.executable, str(EXAMPLE), str(bundle_dir), str(image), *box_arguments,
                             "--out", str(tmp_path / "meshes")], capture_output=True, text=True, timeout=600)
    assert answer.returncode == 0, answer.stderr
    assert "2 people" in answer.stdout and "vertices (10475, 3)" in answer.stdout, answer.stdout
    assert "body_pose (1, 63)" in answer.stdout
    assert main(["run", "--bundle", str(bundle_dir), str(image), *box_arguments, "--overlay", "off",
                 "--out", str(tmp_path / "run")]) == 0
    for person in (0, 1):
        ours = obj_vertices(tmp_path / "meshes" / f"person{person}.obj")
        np.testing.assert_allclose(ours, obj_vertices(tmp_path / "run" / "scene.png" / f"person{person}.obj"),
                                   atol=2e-6)
        params = dict(np.load(tmp_path / "meshes" / f"person{person}_params.npz"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = smplx.SMPLX(str(demo_files[1]), use_pca=False, flat_hand_mean=True, use_face_contour=True,
                                **params)
        from_smplx = model().vertices[0].detach().numpy()
        assert np.abs(from_smplx * [1, -1, -1] - ours).max() < 1e-5  # the OBJ is y up: (x, -y, -z)
    left, right = (obj_vertices(tmp_path / "meshes" / f"person{person}.obj")[:, 0].mean() for person in (0, 1))
    assert left < right  # placed in the scene: the left box's person stands left


def test_the_python_example_reports_a_bad_bundle_in_one_line(scene, tmp_path):
    image, _ = scene
    answer = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "no-bundle"), str(image),
                             "--out", str(tmp_path / "meshes")], capture_output=True, text=True, timeout=120)
    assert answer.returncode == 1
    assert answer.stderr.startswith("run_image: error:") and "no-bundle" in answer.stderr
    assert "Traceback" not in answer.stderr and not (tmp_path / "meshes").exists()


def test_the_readme_python_api_snippet_runs(bundle_dir, scene, tmp_path, monkeypatch):
    """The README's Python API block, with its paths and box pointed at the session's files, runs and
    writes the mesh `bodyrt run` would (the same file as the example's first person)."""
    readme = (EXAMPLE.parents[2] / "README.md").read_text()
    (snippet,) = [block for block in readme.split("```python\n")[1:] if "open_bundle(" in block]
    code = snippet.split("```")[0]
    image, boxes = scene
    assert '"bundle/"' in code and '"photo.jpg"' in code and "[[100, 50, 600, 950]]" in code
    code = (code.replace('"bundle/"', repr(str(bundle_dir))).replace('"photo.jpg"', repr(str(image)))
            .replace("[[100, 50, 600, 950]]", repr([boxes[0]])))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert main(["run", "--bundle", str(bundle_dir), str(image), "--box", *map(str, boxes[0]), "--overlay", "off",
                 "--out", str(tmp_path / "run")]) == 0
    np.testing.assert_allclose(obj_vertices(tmp_path / "person0.obj"),
                               obj_vertices(tmp_path / "run" / "scene.png" / "person0.obj"), atol=2e-6)
