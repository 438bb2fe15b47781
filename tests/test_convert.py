"""`bodyrt convert smpl-to-smplx`: correspondence files, inputs, and the three-stage trust-region fit.

Known SMPL-X parameters are posed with the synthetic SMPL-X model; the fits must recover them.
Iteration caps are small to keep the run short; the tolerances below are what those caps reach.
"""

import functools

import numpy as np
import pytest
import torch

from bodyrt.cli import main
from bodyrt.errors import BodyModelError, InputError
from bodyrt.export import convert
from bodyrt.export.convert import (Correspondence, FitSettings, closest_points_on_triangles, load_correspondence,
                                   nearest_point_correspondence, smpl_inputs, write_correspondence)
from bodyrt.export.rotations import axis_angle_to_matrix

VALID_DISTANCE_M = 0.01  # SMPL-X vertices farther than this from the SMPL surface are marked invalid


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def models(tmp_path_factory, synthetic_smplx_path):
    from bodyrt.export.fixtures.body_models import smpl_arrays, smplx_arrays, write_body_model

    smpl = smpl_arrays(seed=0)
    path = write_body_model(tmp_path_factory.mktemp("convert-smpl") / "SMPL_NEUTRAL.pkl", smpl)
    return {"smpl": smpl, "smplx": smplx_arrays(seed=0), "smpl_path": path, "smplx_path": synthetic_smplx_path}


@pytest.fixture(scope="module")
def correspondence(models):
    """The supplement's construction on the two synthetic templates (which are the same made-up body)."""
    smpl, smplx = models["smpl"], models["smplx"]
    return nearest_point_correspondence(smpl["v_template"], smpl["f"].astype(np.int64), smplx["v_template"],
                                        max_distance=VALID_DISTANCE_M)


@pytest.fixture(scope="module")
def smplx_model(models):
    from bodyrt.export.body_model import BodyModel, load_body_model

    return BodyModel(load_body_model(models["smplx_path"]), num_betas=10, num_expression=10).double()


def known_parameters(count, seed=1):
    """SMPL-X parameters (axis-angle pose (N, 165): body 0.15 rad, hands, jaw and eyes 0.05 rad)."""
    rng = np.random.default_rng(seed)
    pose = rng.normal(0.0, 0.05, (count, 55, 3))
    pose[:, :22] = rng.normal(0.0, 0.15, (count, 22, 3))
    return {"pose": pose.reshape(count, -1), "betas": rng.normal(0.0, 0.5, (count, 10)),
            "expression": rng.normal(0.0, 0.5, (count, 10)), "translation": rng.normal(0.0, 0.2, (count, 3))}


def posed_smplx(smplx_model, parameters, edges):
    count = len(parameters["pose"])
    problem = convert.SmplxFitProblem(smplx_model, np.zeros((count, 10475, 3)), np.ones(10475, bool), edges)
    with torch.no_grad():
        return problem.vertices({key: torch.from_numpy(value) for key, value in parameters.items()}).numpy()


def fitted_pose(result):
    return np.concatenate([result[name].reshape(len(result["betas"]), -1) for name, _ in convert.POSE_PARTS], axis=1)


def rotation_errors(pose, truth):
    """(55,) largest rotation-matrix entry difference per joint over the batch."""
    ours = axis_angle_to_matrix(torch.from_numpy(pose).reshape(-1, 55, 3))
    theirs = axis_angle_to_matrix(torch.from_numpy(truth).reshape(-1, 55, 3))
    return (ours - theirs).abs().amax(dim=(0, 2, 3)).numpy()


class StageRecorder:
    """Wraps scipy.optimize.minimize: records each call's method, size, start and end loss, iterations."""

    def __init__(self, minimize):
        self.minimize, self.calls = minimize, []

    def __call__(self, fun, x0, **options):
        start_loss = fun(x0)[0]
        result = self.minimize(fun, x0, **options)
        self.calls.append({"method": options["method"], "hessp": options.get("hessp") is not None, "size": len(x0),
                           "start": start_loss, "end": float(result.fun), "iterations": int(result.nit)})
        return result


@pytest.fixture
def stage_recorder(monkeypatch):
    import scipy.optimize

    recorder = StageRecorder(scipy.optimize.minimize)
    monkeypatch.setattr(scipy.optimize, "minimize", recorder)
    return recorder


# ------------------------------------------------------------------------------------ correspondence

def test_closest_points_on_a_triangle_hand_computed():
    corner = np.array([[0.0, 0.0, 0.0]])
    a, b, c = corner, corner + [[2.0, 0.0, 0.0]], corner + [[0.0, 2.0, 0.0]]
    points = np.array([[0.5, 0.5, 0.3], [1.0, -1.0, 0.0], [-1.0, -1.0, 0.0], [2.0, 2.0, 0.0]])
    barycentric, squared = closest_points_on_triangles(points, *(np.repeat(p, 4, axis=0) for p in (a, b, c)))
    np.testing.assert_allclose(barycentric, [[0.5, 0.25, 0.25], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]],
                               atol=1e-12)
    np.testing.assert_allclose(squared, [0.09, 1.0, 2.0, 2.0], atol=1e-12)


def test_nearest_point_correspondence_on_the_synthetic_templates(models, correspondence):
    smpl, smplx = models["smpl"], models["smplx"]
    assert correspondence.triangle.shape == (10475,) and correspondence.barycentric.shape == (10475, 3)
    np.testing.assert_allclose(correspondence.barycentric.sum(axis=1), 1.0, atol=1e-9)
    assert (correspondence.barycentric >= -1e-9).all()
    np.testing.assert_array_equal(correspondence.triangle_vertices, smpl["f"][correspondence.triangle])
    mapped = correspondence.to_smplx_topology(smpl["v_template"][None])[0]
    distance = np.linalg.norm(mapped - smplx["v_template"], axis=1)
    assert (distance[correspondence.valid] <= VALID_DISTANCE_M + 1e-9).all()
    assert (distance[~correspondence.valid] > VALID_DISTANCE_M).all()
    assert correspondence.valid.mean() > 0.98 and np.median(distance) < 1e-3


def test_correspondence_file_round_trip(correspondence, tmp_path):
    loaded = load_correspondence(write_correspondence(tmp_path / "smpl_to_smplx.npz", correspondence))
    for key in convert.CORRESPONDENCE_KEYS:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(correspondence, key))


def broken(correspondence, key, value):
    fields = {name: getattr(correspondence, name) for name in convert.CORRESPONDENCE_KEYS}
    fields[key] = value
    return fields


@pytest.mark.parametrize("change,message", [
    (lambda c: {k: getattr(c, k) for k in ("triangle", "barycentric", "valid")}, "key 'triangle_vertices' is missing"),
    (lambda c: broken(c, "barycentric", c.barycentric[:100]), r"key 'barycentric' has shape \(100, 3\)"),
    (lambda c: broken(c, "barycentric", c.barycentric * 1.1), "key 'barycentric' rows must be finite and sum to 1"),
    (lambda c: broken(c, "triangle", c.triangle + 13776), "key 'triangle' holds indices"),
    (lambda c: broken(c, "triangle_vertices", c.triangle_vertices - 7000), "key 'triangle_vertices' holds indices"),
    (lambda c: broken(c, "valid", np.zeros(10475, bool)), "key 'valid' marks no vertex as valid"),
])
def test_bad_correspondence_files_are_named(correspondence, tmp_path, change, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **change(correspondence))
    with pytest.raises(BodyModelError, match=message) as error:
        load_correspondence(path)
    assert str(path) in str(error.value)


def test_missing_and_unreadable_correspondence(tmp_path):
    with pytest.raises(BodyModelError, match="no such correspondence file"):
        load_correspondence(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(BodyModelError, match=r"not an .npz correspondence file \(not a zip archive"):
        load_correspondence(tmp_path / "text.npz")


# ------------------------------------------------------------------------------------------- inputs

def test_smpl_parameter_inputs(models, tmp_path):
    rng = np.random.default_rng(0)
    pose, betas, translation = rng.normal(0, 0.2, (2, 72)), rng.normal(0, 1, (2, 10)), rng.normal(0, 1, (2, 3))
    np.savez(tmp_path / "params.npz", global_orient=pose[:, :3], body_pose=pose[:, 3:], betas=betas)
    np.savez(tmp_path / "moved.npz", pose=pose, betas=betas, transl=translation)
    meshes, start = smpl_inputs(tmp_path / "params.npz", models["smpl_path"])
    moved, _ = smpl_inputs(tmp_path / "moved.npz", models["smpl_path"])
    assert meshes.shape == (2, 6890, 3) and start.shape == (2, 22, 3)
    np.testing.assert_allclose(start, pose.reshape(2, 24, 3)[:, :22])
    np.testing.assert_allclose(moved, meshes + translation[:, None], atol=1e-9)
    np.savez(tmp_path / "meshes.npz", vertices=meshes[0])
    single, none = smpl_inputs(tmp_path / "meshes.npz")
    assert single.shape == (1, 6890, 3) and none is None


@pytest.mark.parametrize("entries,smpl_model,message", [
    ({"vertices": np.zeros((2, 6000, 3))}, False, r"'vertices' has shape \(2, 6000, 3\)"),
    ({"betas": np.zeros((1, 10))}, True, "holds neither 'vertices'"),
    ({"pose": np.zeros((1, 72))}, False, "give the SMPL model file with --smpl-model"),
    ({"pose": np.zeros((1, 70))}, True, r"'pose' has shape \(1, 70\)"),
    ({"pose": np.zeros((2, 72)), "betas": np.zeros((3, 10))}, True, "2 poses, 3 betas"),
])
def test_bad_inputs_are_named(models, tmp_path, entries, smpl_model, message):
    path = tmp_path / "input.npz"
    np.savez(path, **entries)
    with pytest.raises(InputError, match=message):
        smpl_inputs(path, models["smpl_path"] if smpl_model else None)


def test_wrong_model_files_are_refused(models, correspondence):
    with pytest.raises(BodyModelError, match="expected an SMPL-X model file"):
        convert.convert_smpl_to_smplx(np.zeros((1, 6890, 3)), correspondence, models["smpl_path"])
    with pytest.raises(BodyModelError, match="expected an SMPL model file"):
        convert.smpl_meshes(models["smplx_path"], np.zeros((1, 24, 3)), np.zeros((1, 10)))


def test_cli_rejects_a_zero_batch_size(tmp_path, capsys):
    code = main(["convert", "smpl-to-smplx", str(tmp_path / "in.npz"), "--correspondence", str(tmp_path / "c.npz"),
                 "--smplx-model", str(tmp_path / "m.npz"), "--out", str(tmp_path / "out.npz"), "--batch-size", "0"])
    assert code == 1 and "--batch-size must be at least 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ fitting

def test_exact_targets_recover_the_parameters(smplx_model, stage_recorder):
    """All vertices valid, targets posed from known parameters, the SMPL body pose as the start.

    With caps (4, 2, 7) the fit is within 1 mm of the targets on average and the parameters within the
    bounds below; left to converge (11 stage-3 iterations) it reaches 1e-9 m and 1e-8 in the parameters.
    """
    edges = convert.mesh_edges(smplx_model.faces)
    truth = known_parameters(1)
    targets = posed_smplx(smplx_model, truth, edges)
    settings = FitSettings(batch_size=1, max_iterations=(4, 2, 7), gradient_tolerance=1e-6)
    start = truth["pose"].reshape(1, 55, 3)[:, :22]
    result = convert.fit_batch(smplx_model, targets, np.ones(10475, bool), edges, settings, initial_pose=start)
    assert result["vertex_error_m"].max() < 1e-3
    assert rotation_errors(fitted_pose(result), truth["pose"]).max() < 0.1
    np.testing.assert_allclose(result["betas"], truth["betas"], atol=0.1)
    np.testing.assert_allclose(result["expression"], truth["expression"], atol=0.2)
    np.testing.assert_allclose(result["transl"], truth["translation"], atol=2e-3)
    assert [call["size"] for call in stage_recorder.calls] == [165, 3, 188]  # pose; translation; everything


def test_convert_recovers_known_smplx_parameters_through_smpl(models, correspondence, smplx_model, tmp_path,
                                                             stage_recorder):
    """SMPL-X (known parameters) -> SMPL meshes -> `convert_file` -> SMPL-X parameters.

    The SMPL meshes are the posed SMPL-X surface sampled at SMPL's vertices (a reverse nearest-point
    correspondence). That round trip alone moves valid vertices by 0.7 mm on average (up to 14 mm at
    fingertips, where the meshes differ most), so the fit is held to 2 mm mean from the true SMPL-X
    mesh; eyeballs are invalid (SMPL has none), so eye rotations are not checked.
    """
    smplx = models["smplx"]
    edges = convert.mesh_edges(smplx["f"])
    truth = known_parameters(1, seed=2)
    posed = posed_smplx(smplx_model, truth, edges)
    reverse = nearest_point_correspondence(smplx["v_template"], smplx["f"].astype(np.int64),
                                           models["smpl"]["v_template"], max_distance=np.inf)
    np.savez(tmp_path / "smpl_meshes.npz", vertices=reverse.to_smplx_topology(posed))
    write_correspondence(tmp_path / "correspondence.npz", correspondence)
    settings = FitSettings(batch_size=1, max_iterations=(8, 2, 15), gradient_tolerance=1e-6)
    out = convert.convert_file(tmp_path / "smpl_meshes.npz", tmp_path / "correspondence.npz", models["smplx_path"],
                               tmp_path / "fits" / "smplx.npz", settings=settings)
    with np.load(out) as archive:
        result = {key: archive[key] for key in archive.files}

    # every stage ran, in order, with trust-ncg and Hessian products, and lowered its loss
    assert len(stage_recorder.calls) == 3
    for index, call in enumerate(stage_recorder.calls):
        assert call["method"] == "trust-ncg" and call["hessp"] and call["iterations"] >= 1
        assert call["end"] < 0.5 * call["start"], (index, call)
    assert [call["size"] for call in stage_recorder.calls] == [165, 3, 188]
    assert (result["stage_iterations"] >= 1).all() and result["stage_losses"].shape == (1, 3)

    assert result["vertices"].shape == (1, 10475, 3) and result["left_hand_pose"].shape == (1, 15, 3)
    valid = correspondence.valid
    error = np.linalg.norm(result["vertices"] - posed, axis=2)
    print(f"mean valid-vertex distance to the true SMPL-X mesh: {error[:, valid].mean() * 1000:.2f} mm")
    assert error[:, valid].mean(axis=1).max() < 2e-3
    body_and_jaw = list(range(23))  # eyes (23, 24) cannot be seen through SMPL
    assert rotation_errors(fitted_pose(result), truth["pose"])[body_and_jaw].max() < 0.05
    np.testing.assert_allclose(result["transl"], truth["translation"], atol=5e-3)
    np.testing.assert_allclose(result["betas"], truth["betas"], atol=0.25)


def test_cli_converts_smpl_parameters(models, correspondence, tmp_path, monkeypatch):
    """The command end to end on one body, with one iteration per stage (the fit itself is tested above)."""
    monkeypatch.setattr(convert, "FitSettings", functools.partial(FitSettings, max_iterations=(1, 1, 1)))
    np.savez(tmp_path / "params.npz", global_orient=np.zeros((1, 3)), body_pose=np.full((1, 69), 0.05),
             betas=np.zeros((1, 10)))
    write_correspondence(tmp_path / "correspondence.npz", correspondence)
    code = main(["convert", "smpl-to-smplx", str(tmp_path / "params.npz"), "--correspondence",
                 str(tmp_path / "correspondence.npz"), "--smplx-model", str(models["smplx_path"]),
                 "--smpl-model", str(models["smpl_path"]), "--out", str(tmp_path / "fits.npz")])
    assert code == 0
    with np.load(tmp_path / "fits.npz") as result:
        assert {"global_orient", "body_pose", "betas", "expression", "transl", "vertices", "stage_losses",
                "vertex_error_m"} <= set(result.files)
        assert result["body_pose"].shape == (1, 21, 3) and result["vertex_error_m"][0] < 0.02
