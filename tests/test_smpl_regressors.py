"""HKMR and the deform-and-learn regressor: sizes, rotation maths, checkpoints, bundles and the runtime.

The two bundles are exported once per module through the CLI (`bodyrt export --arch ...`); every
parity test runs the torch-free runtime against the eager PyTorch SmplRegressorPipeline.
"""

import json
import math
import pickle
import warnings

import numpy as np
import pytest
import torch

from bodyrt.cli import main
from bodyrt.errors import BodyModelError, CheckpointError, InputError
from bodyrt.export import deform_learn, hkmr
from bodyrt.export.deform_learn import gram_schmidt, quaternion_to_matrix
from bodyrt.export.smpl_bundle import SmplRegressorPipeline, load_smpl_regressor, write_random_smpl_checkpoint

ARCHS = ("hkmr", "deform-and-learn")
PARITY_M = 1e-4  # the bar: ONNX Runtime against PyTorch, metres


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def smpl_arrays_():
    from bodyrt.export.fixtures.body_models import smpl_arrays

    return smpl_arrays(seed=0)


@pytest.fixture(scope="module")
def smpl_path(tmp_path_factory, smpl_arrays_):
    from bodyrt.export.fixtures.body_models import write_body_model

    return write_body_model(tmp_path_factory.mktemp("smpl") / "SMPL_NEUTRAL.pkl", smpl_arrays_)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    directory = tmp_path_factory.mktemp("smpl-checkpoints")
    return {arch: write_random_smpl_checkpoint(directory / f"{arch}.pt", arch, seed=0) for arch in ARCHS}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, checkpoints, smpl_path):
    """Both architectures exported through the CLI, once per module."""
    directory = tmp_path_factory.mktemp("smpl-bundles")
    paths = {}
    for arch in ARCHS:
        out = directory / arch
        code = main(["export", "--arch", arch, "--checkpoint", str(checkpoints[arch]),
                     "--body-model", str(smpl_path), "--out", str(out), "--threads", "2"])
        assert code == 0
        paths[arch] = out
    return paths


@pytest.fixture(scope="module")
def references(checkpoints, smpl_path):
    return {arch: SmplRegressorPipeline(checkpoints[arch], smpl_path, arch, threads=2) for arch in ARCHS}


@pytest.fixture(scope="module")
def runtimes(bundles):
    from bodyrt.runtime import open_bundle

    return {arch: open_bundle(bundles[arch], threads=2) for arch in ARCHS}


def scene(height, width, people, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    slot = width / people
    boxes = [[slot * i + 0.15 * slot, 0.05 * height, slot * i + 0.85 * slot, 0.95 * height] for i in range(people)]
    return image, np.asarray(boxes, dtype=np.float32)


def linear_shapes(sequential):
    return [(layer.in_features, layer.out_features) for layer in sequential if isinstance(layer, torch.nn.Linear)]


# ---------------------------------------------------------------------------------- architecture sizes

TORCHVISION_RESNET50_TRUNK_PARAMS = 25_557_032 - (2048 * 1000 + 1000)  # torchvision's count minus its fc


def trunk_parameter_count(module) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if not name.startswith("fc."))


def test_hkmr_layer_sizes_follow_the_paper():
    model = hkmr.HKMR()
    assert trunk_parameter_count(model.encoder) == TORCHVISION_RESNET50_TRUNK_PARAMS
    with torch.no_grad():
        assert model.encoder.eval()(torch.zeros(1, 3, 224, 224)).shape == (1, 2048)
    expected_inputs = {"root": 2070, "left_arm": 2085, "right_arm": 2085, "left_leg": 2082, "right_leg": 2082,
                       "head": 2076}
    chains = model.regressor.chains
    assert set(chains) == set(expected_inputs)
    for name, chain in chains.items():
        assert linear_shapes(chain.embedding) == [(expected_inputs[name], 32), (32, 32)], name
        assert [type(layer) for layer in chain.embedding][1::2] == [torch.nn.ReLU, torch.nn.ReLU]
        assert [(head.in_features, head.out_features) for head in chain.delta_heads] == [(32, 3)] * len(chain.joints)
    assert linear_shapes(model.regressor.shape_mlp) == [(2048 + 10, 512), (512, 128), (128, 10)]
    assert linear_shapes(model.regressor.camera_mlp) == [(2048 + 3, 512), (512, 128), (128, 3)]
    prior = model.pose_prior
    assert linear_shapes(prior.encoder) == [(69, 512)]
    assert (prior.latent_mean.in_features, prior.latent_mean.out_features) == (512, 32)
    assert (prior.latent_log_variance.in_features, prior.latent_log_variance.out_features) == (512, 32)
    assert linear_shapes(prior.decoder) == [(32, 512), (512, 69)]


def test_hkmr_chains_partition_the_smpl_tree():
    from bodyrt.export.fixtures.body_models import SMPL_PARENTS

    joints = [joint for chain in hkmr.CHAINS.values() for joint in chain]
    assert sorted(joints) == list(range(24))
    for name, chain in hkmr.CHAINS.items():
        for parent, child in zip(chain, chain[1:]):
            assert SMPL_PARENTS[child] == parent, (name, child)
    # every limb and the head hang off the root chain's last joint (spine3) or its first (pelvis)
    assert {SMPL_PARENTS[chain[0]] for name, chain in hkmr.CHAINS.items() if name != "root"} == {0, 9}


def test_hkmr_runs_four_inner_and_three_outer_iterations():
    """Count the calls: each delta head 3 x 4 times, the shape and camera MLPs once per outer iteration."""
    regressor = hkmr.HKMRRegressor().eval()
    calls = {}

    def counter(key):
        def hook(module, inputs, output):
            calls[key] = calls.get(key, 0) + 1
        return hook

    for name, chain in regressor.chains.items():
        for position, head in enumerate(chain.delta_heads):
            head.register_forward_hook(counter((name, position)))
    regressor.shape_mlp.register_forward_hook(counter("shape"))
    regressor.camera_mlp.register_forward_hook(counter("camera"))
    with torch.no_grad():
        regressor(torch.randn(2, 2048))
    assert calls.pop("shape") == 3 and calls.pop("camera") == 3
    assert len(calls) == 24 and set(calls.values()) == {12}


def naive_refine(chain, features, betas, context, pose):
    """The chain update as the module doc states it, re-embedding the full state at every joint update."""
    pose = list(pose)
    positions = list(range(len(chain.joints)))
    for sweep in range(4):
        for position in positions if sweep % 2 == 0 else positions[::-1]:
            state = torch.cat([features, betas, *context, *(pose[joint] for joint in chain.joints)], dim=1)
            pose[chain.joints[position]] = pose[chain.joints[position]] + chain.delta_heads[position](chain.embedding(state))
    return pose


def test_hkmr_incremental_embedding_equals_re_embedding():
    generator = torch.Generator().manual_seed(3)
    chain = hkmr.KinematicChain("left_arm")
    with torch.no_grad():
        for parameter in chain.parameters():
            parameter.normal_(0.0, 0.05, generator=generator)
        features, betas = torch.randn(2, 2048, generator=generator), torch.randn(2, 10, generator=generator)
        pose = list(torch.randn(24, 2, 3, generator=generator) * 0.3)
        context = [pose[joint] for joint in hkmr.CHAINS["root"]]
        fast = chain.refine(chain.project_feature(features), betas, context, pose)
        slow = naive_refine(chain, features, betas, context, pose)
    for joint in range(24):
        torch.testing.assert_close(fast[joint], slow[joint], atol=1e-5, rtol=0)
    assert not torch.equal(fast[16], pose[16]) and torch.equal(fast[0], pose[0])


def test_deform_and_learn_sizes_and_layout():
    network = deform_learn.DeformAndLearnNetwork()
    assert trunk_parameter_count(network) == TORCHVISION_RESNET50_TRUNK_PARAMS
    assert (network.fc.in_features, network.fc.out_features) == (2048, 132)
    spans = {name: (s.start, s.stop) for name, s in deform_learn.PARAMS.items()}
    assert spans == {"joint_quaternions": (0, 96), "segment_scales": (96, 120), "global_rotation": (120, 129),
                     "scale": (129, 130), "translation": (130, 132)}
    part = deform_learn.split_params(torch.arange(132.0)[None])
    assert part["joint_quaternions"][0, 1].tolist() == [4.0, 5.0, 6.0, 7.0]
    assert part["scale"].tolist() == [129.0] and part["translation"].tolist() == [[130.0, 131.0]]


# -------------------------------------------------------------------------------- rotation maths

def hamilton_product(p, q):
    w1, x1, y1, z1 = p
    w2, x2, y2, z2 = q
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def rodrigues(axis, angle):
    """Rotation matrix by angle (radians) about a unit axis, numpy, float64."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * k @ k


def quaternion_of(axis, angle):
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    return np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * axis])


def as_matrix(quaternion):
    return quaternion_to_matrix(torch.as_tensor(np.asarray(quaternion), dtype=torch.float64)).numpy()


@pytest.mark.parametrize("quaternion,matrix", [
    ([1, 0, 0, 0], np.eye(3)),
    ([math.sqrt(0.5), 0, 0, math.sqrt(0.5)], [[0, -1, 0], [1, 0, 0], [0, 0, 1]]),  # +90 deg about z
    ([0, 1, 0, 0], np.diag([1.0, -1.0, -1.0])),  # 180 deg about x
    ([0.5, 0.5, 0.5, 0.5], [[0, 0, 1], [1, 0, 0], [0, 1, 0]]),  # 120 deg about (1,1,1): x -> y -> z
    ([2.0, 0, 0, 0], np.eye(3)),  # any length: used as q / |q|
])
def test_quaternion_to_matrix_known_rotations(quaternion, matrix):
    np.testing.assert_allclose(as_matrix(quaternion), np.asarray(matrix, dtype=np.float64), atol=1e-12)


def test_quaternion_to_matrix_against_rodrigues_and_composition():
    rng = np.random.default_rng(0)
    for _ in range(20):
        axis, angle = rng.normal(size=3), rng.uniform(-np.pi, np.pi)
        q = quaternion_of(axis, angle)
        np.testing.assert_allclose(as_matrix(q), rodrigues(axis, angle), atol=1e-12)
        np.testing.assert_allclose(as_matrix(-3.7 * q), rodrigues(axis, angle), atol=1e-12)  # sign and scale
        p = rng.normal(size=4)
        np.testing.assert_allclose(as_matrix(hamilton_product(p, q)), as_matrix(p) @ as_matrix(q), atol=1e-12)
    many = as_matrix(rng.normal(size=(1000, 4)))
    np.testing.assert_allclose(many @ many.transpose(0, 2, 1), np.broadcast_to(np.eye(3), many.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(many), 1.0, atol=1e-12)


def gram_schmidt_reference(matrix):
    """Classical Gram-Schmidt of the columns via QR with a positive diagonal (numpy only)."""
    q, r = np.linalg.qr(matrix)
    return q * np.sign(np.diag(r))


def test_gram_schmidt_hand_computed_and_against_qr():
    upper = torch.tensor([[2.0, 1.0, 5.0, 0.0, 1.0, -2.0, 0.0, 0.0, 3.0]], dtype=torch.float64)
    np.testing.assert_allclose(gram_schmidt(upper)[0].numpy(), np.eye(3), atol=1e-12)
    rotation = rodrigues([1.0, 2.0, -0.5], 2.5)
    np.testing.assert_allclose(gram_schmidt(torch.from_numpy(rotation.reshape(1, 9)))[0].numpy(), rotation,
                               atol=1e-12)
    rng = np.random.default_rng(1)
    matrices = rng.normal(size=(500, 3, 3))
    ours = gram_schmidt(torch.from_numpy(matrices.reshape(500, 9))).numpy()
    reference = np.stack([gram_schmidt_reference(m) for m in matrices])
    np.testing.assert_allclose(ours, reference, atol=1e-9)
    np.testing.assert_allclose(ours.transpose(0, 2, 1) @ ours, np.broadcast_to(np.eye(3), ours.shape), atol=1e-12)
    determinant = np.linalg.det(ours)
    np.testing.assert_allclose(determinant, np.sign(np.linalg.det(matrices)), atol=1e-12)
    positive = np.linalg.det(matrices) > 0
    assert positive.sum() > 100 and np.allclose(determinant[positive], 1.0)


class RotationConversions(torch.nn.Module):
    def forward(self, quaternions, matrices):
        return quaternion_to_matrix(quaternions), gram_schmidt(matrices)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_rotation_conversions_run_in_onnx_runtime(tmp_path, exporter):
    import onnxruntime

    from bodyrt.export.bundle import export_onnx

    generator = torch.Generator().manual_seed(0)
    sample = (torch.randn(4, 24, 4, generator=generator), torch.randn(4, 9, generator=generator))
    path = tmp_path / f"rotations-{exporter}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(RotationConversions(), sample, path, ["quaternions", "matrices"], ["rotations", "orthonormal"],
                    exporter=exporter)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    quaternions = rng.normal(size=(7, 24, 4)).astype(np.float32)  # another batch size than the export's
    quaternions[0, :4] = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1e-3], [0.5, 0.5, 0.5, 0.5]]
    matrices = rng.normal(size=(7, 9)).astype(np.float32)
    matrices[0] = np.eye(3).reshape(9)
    rotations, orthonormal = session.run(None, {"quaternions": quaternions, "matrices": matrices})
    expected = RotationConversions()(torch.from_numpy(quaternions), torch.from_numpy(matrices))
    np.testing.assert_allclose(rotations, expected[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(orthonormal, expected[1].numpy(), atol=1e-6)
    np.testing.assert_allclose(rotations[0, 1], np.diag([1.0, -1.0, -1.0]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(rotations.astype(np.float64)), 1.0, atol=1e-5)


# --------------------------------------------------------------------------------------- the bodies

def test_segment_scaled_body_is_smpl_skinning_without_blend_shapes(smpl_arrays_, smpl_path):
    """Unit scales: the SMPL template posed by the smplx package's lbs with zero betas and no pose blend."""
    from smplx.lbs import lbs

    from bodyrt.export.body_model import load_body_model

    body = deform_learn.SegmentScaledBody(load_body_model(smpl_path)).double()
    generator = torch.Generator().manual_seed(0)
    rotations = quaternion_to_matrix(torch.randn(2, 24, 4, generator=generator, dtype=torch.float64))
    vertices, joints = body(rotations, torch.ones(2, 24, dtype=torch.float64))
    arrays = smpl_arrays_
    template = torch.from_numpy(arrays["v_template"])
    parents = torch.from_numpy(np.asarray(arrays["kintree_table"][0]).astype(np.int64))
    parents[0] = -1
    reference, reference_joints = lbs(
        torch.zeros(2, 10, dtype=torch.float64), rotations, template,
        torch.from_numpy(arrays["shapedirs"]), torch.zeros(207, 6890 * 3, dtype=torch.float64),
        torch.from_numpy(arrays["J_regressor"]), parents, torch.from_numpy(arrays["weights"]), pose2rot=False)
    torch.testing.assert_close(vertices, reference, atol=1e-5, rtol=0)  # the layer keeps float32 buffers
    torch.testing.assert_close(joints[:, :24], reference_joints, atol=1e-5, rtol=0)
    assert joints.shape == (2, 45, 3)


def test_segment_scales_stretch_segments_about_their_joints(smpl_path):
    from bodyrt.export.body_model import load_body_model
    from bodyrt.export.fixtures.body_models import SMPL_PARENTS

    body = deform_learn.SegmentScaledBody(load_body_model(smpl_path)).double()
    generator = torch.Generator().manual_seed(1)
    rotations = quaternion_to_matrix(torch.randn(1, 24, 4, generator=generator, dtype=torch.float64))
    ones = torch.ones(1, 24, dtype=torch.float64)
    unit_vertices, unit_joints = body(rotations, ones)
    scaled_vertices, _ = body(rotations, 1.3 * ones)
    root = unit_joints[:, :1]
    torch.testing.assert_close(scaled_vertices, root + 1.3 * (unit_vertices - root), atol=1e-5, rtol=0)
    # only the left elbow's segment doubles: the forearm (elbow -> wrist) doubles, the upper arm stays
    scales = ones.clone()
    scales[0, 18] = 2.0
    identity = torch.eye(3, dtype=torch.float64).expand(1, 24, 3, 3)
    _, rest = body(identity, ones)
    _, stretched = body(identity, scales)
    torch.testing.assert_close(stretched[0, 20] - stretched[0, 18], 2.0 * (rest[0, 20] - rest[0, 18]))
    torch.testing.assert_close(stretched[0, 18], rest[0, 18])
    assert SMPL_PARENTS[20] == 18


def test_hkmr_stage_is_smpl_of_its_parameters(smpl_arrays_, checkpoints, smpl_path, tmp_path):
    """The HKMR stage's mesh equals the smplx package's SMPL at the stage's own pose and betas."""
    import smplx

    pipeline = SmplRegressorPipeline(checkpoints["hkmr"], smpl_path, "hkmr", threads=2)
    image, boxes = scene(480, 640, 2, seed=4)
    outputs = pipeline(image, boxes).outputs
    plain = tmp_path / "SMPL_NEUTRAL.pkl"  # smplx reads SMPL from plain pickles only
    with open(plain, "wb") as stream:
        pickle.dump(smpl_arrays_, stream)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = smplx.create(str(plain), model_type="smpl", num_betas=10)
    with torch.no_grad():
        reference = model(betas=torch.from_numpy(outputs["betas"]),
                          global_orient=torch.from_numpy(outputs["global_orient"])[:, None],
                          body_pose=torch.from_numpy(outputs["body_pose"]), pose2rot=False)
    np.testing.assert_allclose(outputs["vertices"], reference.vertices.numpy(), atol=1e-5)
    assert np.abs(outputs["betas"]).max() > 1e-3  # the untrained regressor does move away from the mean


# ------------------------------------------------------------------------------------------ checkpoints

@pytest.mark.parametrize("arch", ARCHS)
def test_seeded_checkpoints_are_reproducible(arch, checkpoints, tmp_path):
    again = torch.load(write_random_smpl_checkpoint(tmp_path / "again.pt", arch, seed=0), weights_only=True)
    other = torch.load(write_random_smpl_checkpoint(tmp_path / "other.pt", arch, seed=1), weights_only=True)
    first = torch.load(checkpoints[arch], weights_only=True)
    assert first["arch"] == arch and first["untrained"] is True
    assert all(torch.equal(first["model"][key], again["model"][key]) for key in first["model"])
    assert any(not torch.equal(first["model"][key], other["model"][key]) for key in first["model"])
    model, untrained = load_smpl_regressor(checkpoints[arch], arch)
    assert untrained and not model.training
    if arch == "hkmr":
        assert any(key.startswith("pose_prior.") for key in first["model"])


@pytest.fixture(scope="module")
def hkmr_state(checkpoints):
    return torch.load(checkpoints["hkmr"], weights_only=True)["model"]


def test_training_checkpoint_layout_loads(hkmr_state, checkpoints, tmp_path):
    """{"state_dict": ...} with DataParallel's `module.` prefix loads to the same weights."""
    path = tmp_path / "training.ckpt"
    torch.save({"state_dict": {f"module.{key}": value for key, value in hkmr_state.items()}, "epoch": 7}, path)
    model, untrained = load_smpl_regressor(path, "hkmr")
    assert not untrained
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], hkmr_state[key].to(loaded[key].dtype)) for key in hkmr_state)


@pytest.mark.parametrize("change,key", [
    ("missing", "regressor.chains.left_arm.delta_heads.2.weight"),
    ("missing", "pose_prior.decoder.3.bias"),
    ("shape", "regressor.shape_mlp.4.weight"),
    ("extra", "regressor.chains.tail.delta_heads.0.weight"),
])
def test_bad_checkpoint_key_is_named(hkmr_state, tmp_path, change, key):
    state = dict(hkmr_state)
    if change == "missing":
        del state[key]
    elif change == "shape":
        state[key] = torch.zeros(11, 128)
    else:
        state[key] = torch.zeros(3, 32)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_smpl_regressor(path, "hkmr")


def test_checkpoint_of_the_other_architecture_is_refused(checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="architecture 'deform-and-learn', expected 'hkmr'"):
        load_smpl_regressor(checkpoints["deform-and-learn"], "hkmr")
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(checkpoints["deform-and-learn"], weights_only=True)["model"], bare)
    with pytest.raises(CheckpointError, match="missing tensor 'encoder"):
        load_smpl_regressor(bare, "hkmr")
    with pytest.raises(InputError, match="unknown architecture 'hmr'"):
        load_smpl_regressor(bare, "hmr")


# ------------------------------------------------------------------------------ bundles and runtime

@pytest.mark.parametrize("arch", ARCHS)
def test_manifest_describes_a_body_only_smpl_bundle(arch, bundles):
    from bodyrt.runtime.bundle import read_bundle

    manifest = read_bundle(bundles[arch]).manifest
    assert manifest.arch == arch and manifest.fp32_stages == ()
    assert [stage.name for stage in manifest.stages] == ["body"]
    assert [step.op for step in manifest.steps] == ["body_crop", "graph", "pinhole"]
    assert [step.name for step in manifest.steps] == ["body_crop", "body", "pinhole"]
    assert manifest.steps[0].crop_size == 224
    assert manifest.stages[0].inputs[0].shape == ("people", 3, 224, 224)
    assert manifest.mesh.model == "smpl" and manifest.mesh.num_vertices == 6890
    assert len(manifest.mesh.faces) == 13776
    assert manifest.source.untrained is True
    assert set(manifest.files) == {"body.onnx"}
    assert {"vertices", "joints", "global_orient", "body_pose", "camera_scale"} <= set(manifest.results)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size,people", [((720, 1280), 1), ((480, 640), 3)])
def test_runtime_matches_pytorch(arch, size, people, runtimes, references, record_property):
    image, boxes = scene(*size, people, seed=people)
    ours = runtimes[arch](image, boxes).outputs
    reference = references[arch](image, boxes).outputs
    assert set(ours) == set(reference)
    assert ours["vertices"].shape == (people, 6890, 3) and ours["joints"].shape == (people, 45, 3)
    worst = {key: float(np.abs(ours[key] - reference[key]).max()) for key in reference}
    record_property(f"{arch}_max_vertex_error_m", worst["vertices"])
    assert worst["vertices"] <= PARITY_M and worst["joints"] <= PARITY_M, worst
    assert max(worst.values()) <= 1e-3, worst  # rotations, scales, pinhole translation alike
    assert np.ptp(ours["vertices"][0], axis=0).max() > 0.5  # a body-sized mesh, not a collapsed one


def test_pose_prior_is_not_in_the_exported_graph(bundles, hkmr_state):
    """No initializer of the HKMR graph holds the VAE's weights; the regressor's own weights are there."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(bundles["hkmr"] / "body.onnx")).graph
    fingerprints = {tuple(np.sort(numpy_helper.to_array(tensor).ravel())[:8].round(6)) for tensor in graph.initializer
                    if np.prod(tensor.dims) >= 64}

    def fingerprint(tensor):
        return tuple(np.sort(tensor.numpy().ravel())[:8].round(6))

    assert fingerprint(hkmr_state["regressor.shape_mlp.4.weight"]) in fingerprints  # the control
    prior = {key: value for key, value in hkmr_state.items() if key.startswith("pose_prior.") and value.numel() >= 64
             and value.is_floating_point()}
    assert len(prior) >= 8
    assert not [key for key, value in prior.items() if fingerprint(value) in fingerprints]
    names = [node.name for node in graph.node] + [tensor.name for tensor in graph.initializer]
    assert not [name for name in names if "pose_prior" in name]


@pytest.mark.parametrize("arch", ARCHS)
def test_bodyrt_run_writes_outputs(arch, bundles, tmp_path):
    from bodyrt.images import save_png

    image, boxes = scene(360, 480, 1, seed=9)
    image_path = tmp_path / "person.png"
    save_png(image_path, image)
    out = tmp_path / "out"
    code = main(["run", str(image_path), "--bundle", str(bundles[arch]), "--out", str(out),
                 "--box", *(str(v) for v in boxes[0])])
    assert code == 0
    folder = out / "person.png"
    params = np.load(folder / "person0_params.npz")
    assert params["vertices"].shape == (6890, 3) and params["joints"].shape == (45, 3)
    assert ("betas" in params.files) == (arch == "hkmr") and ("segment_scales" in params.files) == (arch != "hkmr")
    assert params["body_pose"].shape == (1, 69) and params["full_pose"].shape == (1, 72)  # smplx.SMPL's keys
    obj_lines = (folder / "person0.obj").read_text().splitlines()
    assert sum(line.startswith("v ") for line in obj_lines) == 6890
    assert sum(line.startswith("f ") for line in obj_lines) == 13776
    assert (folder / "overlay.png").stat().st_size > 0
    summary = json.loads(next(out.glob("summary-*.json")).read_text())
    assert set(summary["images"][0]["timings_ms"]) >= {"body_crop", "body", "pinhole"}


def test_bench_times_runtime_and_reference(bundles, checkpoints, smpl_path, capsys):
    from bodyrt.bench import run_bench

    report = run_bench(bundle=bundles["deform-and-learn"], reference_files=(checkpoints["deform-and-learn"], smpl_path),
                       repeats=2, warmup=1, memory=False)
    assert set(report["summary"]) == {"pytorch", "onnxruntime"}
    assert report["summary"]["onnxruntime"]["median_ms"] > 0
    assert "speedup_vs_reference" in report["summary"]["onnxruntime"]


def test_export_refuses_an_smplx_model(checkpoints, synthetic_smplx_path, tmp_path, capsys):
    code = main(["export", "--arch", "hkmr", "--checkpoint", str(checkpoints["hkmr"]),
                 "--body-model", str(synthetic_smplx_path), "--out", str(tmp_path / "never")])
    assert code == 1
    assert "needs an SMPL model file" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    with pytest.raises(BodyModelError, match="this one is SMPL-X"):
        SmplRegressorPipeline(checkpoints["hkmr"], synthetic_smplx_path, "hkmr")


def test_smpl_package_reproduces_hkmr_vertices_from_the_saved_parameters(bundles, smpl_arrays_, tmp_path):
    """`run` on an HKMR bundle, two people: each params.npz, given as it is to smplx.SMPL(...), gives
    bodyrt's placed vertices and joints (vertices + transl) within 1e-5 m.

    Deform-and-learn has no such round trip: its body is SMPL's template skinned with per-segment
    scales and without SMPL's blend shapes (test_segment_scaled_body_is_smpl_skinning_without_blend_shapes),
    which no smplx.SMPL parameter expresses; its params.npz carries the same pose keys and `segment_scales`.
    """
    import smplx

    from bodyrt.images import save_png

    image, boxes = scene(360, 640, 2, seed=11)
    save_png(tmp_path / "two.png", image)
    (tmp_path / "boxes.json").write_text(json.dumps({"two.png": boxes.tolist()}))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "two.png"), "--bundle", str(bundles["hkmr"]), "--boxes",
                 str(tmp_path / "boxes.json"), "--overlay", "off", "--out", str(out)]) == 0
    plain = tmp_path / "SMPL_NEUTRAL.pkl"  # smplx reads SMPL from plain pickles only
    with open(plain, "wb") as stream:
        pickle.dump(smpl_arrays_, stream)
    placed_roots = []
    for person in (0, 1):
        params = dict(np.load(out / "two.png" / f"person{person}_params.npz"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = smplx.SMPL(str(plain), **params)
        output = model(return_full_pose=True)
        placed = params["vertices"] + params["transl"]
        assert np.abs(output.vertices[0].detach().numpy() - placed).max() < 1e-5
        assert np.abs(output.joints[0].detach().numpy() - (params["joints"] + params["transl"])).max() < 1e-5
        np.testing.assert_allclose(output.full_pose.detach().numpy(), params["full_pose"], atol=1e-6)
        assert np.abs(params["betas"]).max() > 1e-3 and np.abs(params["body_pose"]).max() > 1e-2  # not the mean
        placed_roots.append(placed.mean(axis=0))
    assert placed_roots[0][0] < placed_roots[1][0]  # the left box's person is left: the full-image transl
