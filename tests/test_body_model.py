"""The export-friendly SMPL / SMPL-X layer against the `smplx` package, its exports, and its loader's errors.

Reference: smplx 0.1.28 on the same synthetic files. smplx reads SMPL only from pickles and cannot read
chumpy pickles without chumpy, so it gets the .npz (SMPL-X) or a plain-numpy pickle (SMPL) of the same
arrays, while our loader reads the chumpy-style .pkl and the .npz. Measured deviations are printed
(pytest -s) and recorded as test properties.
"""

import pickle
import pickletools
import sys
import warnings

import numpy as np
import pytest
import torch

from bodyrt.errors import BodyModelError, InputError
from bodyrt.export.body_model import BodyModel, JointsOnly, load_body_model
from bodyrt.export.rotations import axis_angle_to_matrix, mirror_rotation
from bodyrt.export.fixtures.body_models import smpl_arrays, smplx_arrays, write_body_model

TOLERANCE_M = 1e-5
SMPLX_PARTS = {"global_orient": 1, "body_pose": 21, "left_hand_pose": 15, "right_hand_pose": 15, "jaw_pose": 1}
NECK_IN_BODY_POSE, HEAD_IN_BODY_POSE = 11, 14  # joints 12 and 15


# ---------------------------------------------------------------------------------------------
# Helpers


def random_smplx_inputs(batch: int, seed: int, pose_scale: float = 0.4) -> dict:
    """Axis-angle poses (N, K, 3), betas and expression (N, 10), float32; rows 0 and 1 turn the head
    far left and far right, so the face contour uses its clamped yaw bins too."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {name: pose_scale * torch.randn(batch, count, 3, generator=generator)
              for name, count in SMPLX_PARTS.items()}
    inputs["body_pose"][0, NECK_IN_BODY_POSE] = torch.tensor([0.0, 0.9, 0.0])
    inputs["body_pose"][0, HEAD_IN_BODY_POSE] = torch.tensor([0.1, 0.6, 0.0])
    if batch > 1:
        inputs["body_pose"][1, NECK_IN_BODY_POSE] = torch.tensor([0.0, -0.9, 0.1])
        inputs["body_pose"][1, HEAD_IN_BODY_POSE] = torch.tensor([0.0, -0.6, 0.0])
    inputs["betas"] = torch.randn(batch, 10, generator=generator)
    inputs["expression"] = torch.randn(batch, 10, generator=generator)
    return inputs


def ours_from_axis_angle(model: BodyModel, inputs: dict, joints_only: bool = False):
    rotations = {name: axis_angle_to_matrix(inputs[name]) for name in SMPLX_PARTS if name in inputs}
    rotations["global_orient"] = rotations["global_orient"][:, 0]
    if "jaw_pose" in rotations:
        rotations["jaw_pose"] = rotations["jaw_pose"][:, 0]
    call = model.joints_only if joints_only else model
    with torch.no_grad():
        return call(betas=inputs["betas"], expression=inputs.get("expression"), **rotations)


def smplx_package_output(model, inputs: dict):
    """vertices (N, V, 3), joints (N, J, 3) from an smplx package model, zero translation and eyes."""
    batch = inputs["betas"].shape[0]
    flat = {name: inputs[name].reshape(batch, -1) for name in SMPLX_PARTS if name in inputs}
    extra = {}
    if "expression" in inputs:
        extra = {"expression": inputs["expression"], "leye_pose": torch.zeros(batch, 3),
                 "reye_pose": torch.zeros(batch, 3)}
    with torch.no_grad():
        output = model(betas=inputs["betas"], transl=torch.zeros(batch, 3), **flat, **extra)
    return output.vertices, output.joints


def smplx_reference(npz_path):
    import smplx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return smplx.create(str(npz_path), model_type="smplx", use_pca=False, flat_hand_mean=True,
                            use_face_contour=True, num_betas=10, num_expression_coeffs=10)


def smpl_reference(arrays: dict, directory):
    """smplx's SMPL on a plain-numpy pickle of `arrays` (smplx reads SMPL from pickles only)."""
    import smplx

    path = directory / "SMPL_NEUTRAL.pkl"
    with open(path, "wb") as stream:
        pickle.dump(arrays, stream)
    return smplx.create(str(path), model_type="smpl", num_betas=10)


def max_deviation(ours: torch.Tensor, reference: torch.Tensor) -> float:
    assert ours.shape == reference.shape, f"shape {tuple(ours.shape)} != reference {tuple(reference.shape)}"
    return float((ours - reference).abs().max())


def record(record_property, name: str, value: float) -> None:
    record_property(name, value)
    print(f"{name}: {value:.3g}")


@pytest.fixture(scope="module")
def smplx_data(synthetic_smplx_path):
    return load_body_model(synthetic_smplx_path)


@pytest.fixture(scope="module")
def smplx_model(smplx_data):
    return BodyModel(smplx_data).eval()


# ---------------------------------------------------------------------------------------------
# Agreement with the smplx package


def test_smplx_v11_matches_smplx_package(synthetic_smplx_path, smplx_data, smplx_model, record_property):
    assert smplx_data.kind == "smplx" and (smplx_data.num_shape_dirs, smplx_data.num_expression_dirs) == (300, 100)
    inputs = random_smplx_inputs(batch=5, seed=0)
    vertices, joints = ours_from_axis_angle(smplx_model, inputs)
    reference_vertices, reference_joints = smplx_package_output(smplx_reference(synthetic_smplx_path), inputs)
    assert vertices.shape == (5, 10475, 3) and joints.shape == (5, 144, 3)
    vertex_error = max_deviation(vertices, reference_vertices)
    joint_error = max_deviation(joints, reference_joints)
    record(record_property, "smplx v1.1 npz seed 0: max vertex deviation (m)", vertex_error)
    record(record_property, "smplx v1.1 npz seed 0: max joint deviation (m)", joint_error)
    assert vertex_error < TOLERANCE_M and joint_error < TOLERANCE_M
    # The inputs move things: the contour rows differ between the head turned left and right.
    assert float((joints[0, 127:] - joints[1, 127:]).abs().max()) > 0.02


def test_smplx_v10_npz_and_chumpy_pkl_match_smplx_package(tmp_path, record_property):
    """The v1.0 layout (10 + 10 directions), seed 2, from the .npz and from the chumpy-style .pkl."""
    arrays = smplx_arrays(seed=2, version="1.0")
    npz_path = write_body_model(tmp_path / "SMPLX_NEUTRAL.npz", arrays)
    pkl_path = write_body_model(tmp_path / "pkl" / "SMPLX_NEUTRAL.pkl", arrays)
    inputs = random_smplx_inputs(batch=4, seed=2)
    reference_vertices, reference_joints = smplx_package_output(smplx_reference(npz_path), inputs)
    for path in (npz_path, pkl_path):
        data = load_body_model(path)
        assert data.kind == "smplx" and data.num_shape_dirs == 10 and data.num_expression_dirs == 10
        vertices, joints = ours_from_axis_angle(BodyModel(data), inputs)
        vertex_error = max_deviation(vertices, reference_vertices)
        joint_error = max_deviation(joints, reference_joints)
        record(record_property, f"smplx v1.0 {path.suffix} seed 2: max vertex deviation (m)", vertex_error)
        record(record_property, f"smplx v1.0 {path.suffix} seed 2: max joint deviation (m)", joint_error)
        assert vertex_error < TOLERANCE_M and joint_error < TOLERANCE_M


def test_smpl_pkl_and_npz_match_smplx_package(tmp_path, record_property):
    arrays = smpl_arrays(seed=4)
    reference = smpl_reference(arrays, tmp_path)
    generator = torch.Generator().manual_seed(4)
    inputs = {"global_orient": 0.5 * torch.randn(4, 1, 3, generator=generator),
              "body_pose": 0.5 * torch.randn(4, 23, 3, generator=generator),
              "betas": torch.randn(4, 10, generator=generator)}
    with torch.no_grad():
        expected = reference(betas=inputs["betas"], global_orient=inputs["global_orient"].reshape(4, 3),
                             body_pose=inputs["body_pose"].reshape(4, 69), transl=torch.zeros(4, 3))
    assert expected.joints.shape == (4, 45, 3)
    for suffix in ("pkl", "npz"):
        model = BodyModel(load_body_model(write_body_model(tmp_path / suffix / f"SMPL_NEUTRAL.{suffix}", arrays)))
        with torch.no_grad():
            vertices, joints = model(inputs["betas"], axis_angle_to_matrix(inputs["global_orient"][:, 0]),
                                     axis_angle_to_matrix(inputs["body_pose"]))
        vertex_error = max_deviation(vertices, expected.vertices)
        joint_error = max_deviation(joints, expected.joints)
        record(record_property, f"smpl .{suffix} seed 4: max vertex deviation (m)", vertex_error)
        record(record_property, f"smpl .{suffix} seed 4: max joint deviation (m)", joint_error)
        assert vertex_error < TOLERANCE_M and joint_error < TOLERANCE_M


def test_mirrored_arm_poses_give_mirrored_joints(smplx_model):
    """Posing the right arm with the mirror of the left arm's rotations mirrors the arm's joints."""
    generator = torch.Generator().manual_seed(5)
    left_arm = axis_angle_to_matrix(0.6 * torch.randn(2, 3, 3, generator=generator))  # collar, shoulder, elbow
    body_pose = torch.eye(3).repeat(2, 21, 1, 1)
    body_pose[:, [12, 15, 17]] = left_arm
    body_pose[:, [13, 16, 18]] = mirror_rotation(left_arm)
    with torch.no_grad():
        _, joints = smplx_model(torch.zeros(2, 10), torch.eye(3).repeat(2, 1, 1), body_pose)
    left, right = joints[:, [13, 16, 18, 20]], joints[:, [14, 17, 19, 21]]  # collar .. wrist
    # The synthetic skeleton is symmetric up to the joint regressor's fit (< 1 mm).
    assert float((right - left * torch.tensor([-1.0, 1.0, 1.0])).abs().max()) < 1e-3
    assert float((left[:, 3] - left[:, 0]).norm(dim=-1).min()) > 0.4


# ---------------------------------------------------------------------------------------------
# joints_only


def test_joints_only_equals_forward_joints_and_skins_few_vertices(smplx_model, tmp_path, record_property):
    inputs = random_smplx_inputs(batch=3, seed=6, pose_scale=0.7)
    _, joints = ours_from_axis_angle(smplx_model, inputs)
    smplx_error = max_deviation(ours_from_axis_angle(smplx_model, inputs, joints_only=True), joints)
    record(record_property, "smplx joints_only vs forward: max deviation (m)", smplx_error)
    assert smplx_error <= 1e-6  # float32 rounding at most; bit-identical on this machine
    assert len(smplx_model.joint_vertex_ids) <= 400  # of 10475: 21 vertex joints, 51 + 79 * 17 landmarks

    smpl = BodyModel(load_body_model(write_body_model(tmp_path / "SMPL_NEUTRAL.npz", smpl_arrays(seed=6))))
    rotations = axis_angle_to_matrix(0.7 * torch.randn(3, 24, 3, generator=torch.Generator().manual_seed(6)))
    betas = torch.randn(3, 10, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        _, smpl_joints = smpl(betas, rotations[:, 0], rotations[:, 1:])
        smpl_only = smpl.joints_only(betas, rotations[:, 0], rotations[:, 1:])
    smpl_error = max_deviation(smpl_only, smpl_joints)
    record(record_property, "smpl joints_only vs forward: max deviation (m)", smpl_error)
    assert smpl_only.shape == (3, 45, 3) and smpl_error <= 1e-6
    assert len(smpl.joint_vertex_ids) == 21


# ---------------------------------------------------------------------------------------------
# ONNX export, both exporters

INPUT_NAMES = ["betas", "global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "expression"]


def matrix_inputs(batch: int, seed: int) -> tuple:
    inputs = random_smplx_inputs(batch, seed)
    rotations = {name: axis_angle_to_matrix(inputs[name]) for name in SMPLX_PARTS}
    return (inputs["betas"], rotations["global_orient"][:, 0], rotations["body_pose"], rotations["left_hand_pose"],
            rotations["right_hand_pose"], rotations["jaw_pose"][:, 0], inputs["expression"])


def export_onnx(module, path, output_names, dynamo: bool):
    """Export at batch 2 with a dynamic batch axis; TorchScript (dynamo=False) or torch.export (True)."""
    if dynamo:
        batch = torch.export.Dim("batch")
        axes = {"dynamic_shapes": tuple({0: batch} for _ in INPUT_NAMES)}
    else:
        axes = {"dynamic_axes": {name: {0: "batch"} for name in INPUT_NAMES + output_names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, matrix_inputs(2, seed=8), str(path), input_names=INPUT_NAMES,
                          output_names=output_names, opset_version=18, dynamo=dynamo, **axes)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_export_runs_in_onnxruntime_with_a_dynamic_batch(smplx_model, tmp_path, dynamo, record_property):
    import onnxruntime

    inputs = matrix_inputs(3, seed=9)
    feeds = {name: tensor.numpy() for name, tensor in zip(INPUT_NAMES, inputs)}
    with torch.no_grad():
        expected_vertices, expected_joints = smplx_model(*inputs)
    cases = [(smplx_model, ["vertices", "joints"], (expected_vertices, expected_joints)),
             (JointsOnly(smplx_model), ["joints"], (expected_joints,))]
    for module, output_names, expected in cases:
        path = tmp_path / f"{'_'.join(output_names)}.onnx"
        export_onnx(module, path, output_names, dynamo)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [node.name for node in session.get_inputs()] == INPUT_NAMES
        assert all(isinstance(node.shape[0], str) for node in session.get_inputs())  # symbolic batch axis
        outputs = session.run(output_names, feeds)
        for name, result, reference in zip(output_names, outputs, expected):
            error = max_deviation(torch.from_numpy(result), reference)
            record(record_property, f"onnx {'dynamo' if dynamo else 'torchscript'} {module.__class__.__name__} "
                                    f"{name}: max deviation (m)", error)
            assert error < TOLERANCE_M


# ---------------------------------------------------------------------------------------------
# Loader errors


def test_chumpy_pickles_load_as_numpy_without_chumpy(tmp_path):
    arrays = smpl_arrays(seed=3)
    pkl_path = write_body_model(tmp_path / "SMPL_NEUTRAL.pkl", arrays)
    globals_in_file = {arg for opcode, arg, _ in pickletools.genops(pkl_path.read_bytes())
                       if opcode.name == "GLOBAL"}
    assert {"chumpy.ch Ch", "scipy.sparse._csc csc_matrix"} <= globals_in_file
    assert "chumpy" not in sys.modules  # the writer's stand-in module is gone again

    from_pickle = load_body_model(pkl_path)
    from_npz = load_body_model(write_body_model(tmp_path / "SMPL_NEUTRAL.npz", arrays))
    assert "chumpy" not in sys.modules
    assert from_pickle.parents == from_npz.parents == [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14,
                                                        16, 17, 18, 19, 20, 21]
    for key, array in from_npz.arrays.items():
        assert type(from_pickle.arrays[key]) is np.ndarray
        np.testing.assert_array_equal(from_pickle.arrays[key], array, err_msg=key)
    np.testing.assert_array_equal(from_pickle.arrays["J_regressor"], arrays["J_regressor"].astype(np.float32))


def small_smplx_arrays() -> dict:
    """The first keys of an SMPL-X file, valid up to 'shapedirs' (v1.0 size), for the error tests."""
    rng = np.random.default_rng(0)
    return {"v_template": rng.normal(size=(10475, 3)), "f": rng.integers(0, 10475, size=(20908, 3)),
            "shapedirs": np.zeros((10475, 3, 20))}


def expect_error(path, *fragments):
    with pytest.raises(BodyModelError) as caught:
        load_body_model(path)
    message = str(caught.value)
    for fragment in (str(path),) + fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message


def test_missing_key_names_the_key_and_its_expected_shape(tmp_path):
    path = write_body_model(tmp_path / "missing.npz", small_smplx_arrays())
    expect_error(path, "'posedirs'", "missing", "(10475, 3, 486)")


def test_wrong_shapes_name_the_key_the_expected_and_the_found_shape(tmp_path):
    arrays = small_smplx_arrays()
    arrays["posedirs"] = np.zeros((10475, 3, 10))
    expect_error(write_body_model(tmp_path / "posedirs.npz", arrays), "'posedirs'", "(10475, 3, 10)",
                 "(10475, 3, 486)")

    arrays = small_smplx_arrays()
    arrays["shapedirs"] = np.zeros((10475, 3, 30))
    expect_error(write_body_model(tmp_path / "shapedirs.npz", arrays), "'shapedirs'", "(10475, 3, 30)",
                 "(10475, 3, 400)", "(10475, 3, 20)")

    arrays = small_smplx_arrays()
    arrays["v_template"] = np.zeros((5000, 3))
    expect_error(write_body_model(tmp_path / "v_template.npz", arrays), "'v_template'", "(5000, 3)",
                 "(10475, 3)", "(6890, 3)")

    smpl = smpl_arrays(seed=0)
    smpl["J_regressor"] = smpl["J_regressor"][:, :-1]
    expect_error(write_body_model(tmp_path / "regressor.npz", smpl), "'J_regressor'", "(24, 6889)", "(24, 6890)")

    smpl = smpl_arrays(seed=0)
    smpl["weights"] = smpl["weights"].T
    expect_error(write_body_model(tmp_path / "weights.pkl", smpl), "'weights'", "(24, 6890)", "(6890, 24)")


def test_bad_values_are_reported(tmp_path):
    smpl = smpl_arrays(seed=0)
    smpl["f"] = smpl["f"].astype(np.int64)
    smpl["f"][5, 1] = 6890
    expect_error(write_body_model(tmp_path / "faces.npz", smpl), "'f'", "6890", "[0, 6889]")

    smpl = smpl_arrays(seed=0)
    smpl["kintree_table"] = smpl["kintree_table"].copy()
    smpl["kintree_table"][0, 4] = 7
    expect_error(write_body_model(tmp_path / "kintree.npz", smpl), "'kintree_table'", "joint 4", "parent 7")

    smpl = smpl_arrays(seed=0)
    smpl["posedirs"] = smpl["posedirs"].copy()
    smpl["posedirs"][0, 0, 0] = np.nan
    expect_error(write_body_model(tmp_path / "nan.npz", smpl), "'posedirs'", "NaN")


def test_unreadable_and_foreign_files_get_a_clear_error(tmp_path, synthetic_smplx_path):
    expect_error(tmp_path / "absent.npz", "no such body-model file")

    text = tmp_path / "notes.npz"
    text.write_text("these are not the arrays you are looking for\n")
    expect_error(text, "not a readable SMPL or SMPL-X model file")

    truncated_npz = tmp_path / "truncated.npz"
    truncated_npz.write_bytes(synthetic_smplx_path.read_bytes()[:1_000_000])
    expect_error(truncated_npz, "not a readable SMPL or SMPL-X model file")

    smpl_pkl = write_body_model(tmp_path / "SMPL_NEUTRAL.pkl", smpl_arrays(seed=0))
    truncated_pkl = tmp_path / "truncated.pkl"
    truncated_pkl.write_bytes(smpl_pkl.read_bytes()[:len(smpl_pkl.read_bytes()) // 2])
    expect_error(truncated_pkl, "not a readable SMPL or SMPL-X model file")

    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    expect_error(empty, "not a readable SMPL or SMPL-X model file")

    listing = tmp_path / "list.pkl"
    listing.write_bytes(pickle.dumps([1, 2, 3]))
    expect_error(listing, "not an SMPL or SMPL-X model file", "a list")

    other_arrays = tmp_path / "image.npz"
    np.savez(other_arrays, image=np.zeros((4, 4)))
    expect_error(other_arrays, "'v_template' is missing")

    directory = tmp_path / "a_directory.npz"
    directory.mkdir()
    expect_error(directory, "not a readable SMPL or SMPL-X model file")


def test_foreign_classes_in_a_pickle_are_never_run(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "payload.pkl"
    path.write_bytes(pickle.dumps({"v_template": Payload()}, protocol=2))
    expect_error(path, "'v_template'", "holds")


# ---------------------------------------------------------------------------------------------
# Argument errors


def test_wrong_arguments_name_the_argument_and_shapes(smplx_model, tmp_path):
    eye = torch.eye(3).repeat(2, 1, 1)
    with pytest.raises(InputError, match=r"'body_pose' has shape \(2, 23, 3, 3\); expected \(N, 21, 3, 3\)"):
        smplx_model(torch.zeros(2, 10), eye, torch.eye(3).repeat(2, 23, 1, 1))
    with pytest.raises(InputError, match=r"'betas' has shape \(2, 11\); expected \(N, 10\)"):
        smplx_model(torch.zeros(2, 11), eye, torch.eye(3).repeat(2, 21, 1, 1))
    with pytest.raises(InputError, match=r"'left_hand_pose' has shape \(2, 15, 3\)"):
        smplx_model.joints_only(torch.zeros(2, 10), eye, torch.eye(3).repeat(2, 21, 1, 1),
                                left_hand_pose=torch.zeros(2, 15, 3))
    smpl_path = write_body_model(tmp_path / "SMPL_NEUTRAL.npz", smpl_arrays(seed=0))
    smpl = BodyModel(load_body_model(smpl_path))
    with pytest.raises(InputError, match="'jaw_pose' given to an SMPL model"):
        smpl(torch.zeros(2, 10), eye, torch.eye(3).repeat(2, 23, 1, 1), jaw_pose=eye)
    with pytest.raises(BodyModelError, match=r"num_betas=11 asked, the file has 10 shape directions"):
        BodyModel(load_body_model(smpl_path), num_betas=11)
