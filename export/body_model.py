"""SMPL and SMPL-X as an export-friendly PyTorch layer, and a loader for their model files.

    load_body_model(path) -> BodyModelData    .npz or official .pkl (chumpy-free), validated
    BodyModel(data)(...)  -> vertices, joints  linear blend skinning from rotation matrices
    BodyModel.joints_only(...) -> joints       the same joints without skinning every vertex

The skinning steps are pure functions in bodyrt.export.skinning (one per step of the SMPL paper);
this module reads and checks the model files and holds the layer that chains those steps.

Joints come in the order of the `smplx` package: SMPL-X with face contour gives 144 = 55 skeleton
joints + 21 vertex joints + 51 static face landmarks + 17 dynamic contour landmarks; SMPL gives
45 = 24 skeleton joints + 21 vertex joints. Units are the model file's, metres for the official ones.
"""

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bodyrt.errors import BodyModelError, InputError
from bodyrt.export.skinning import (NUM_CONTOUR_BINS, barycentric_points, blend_shapes, contour_bin_one_hot,
                                    pose_features, rigid_transform_chain, skin)

# ---------------------------------------------------------------------------------------------
# Facts about the two topologies.

# The 21 vertex joints appended after the skeleton, in the order of the smplx package:
# nose, right eye, left eye, right ear, left ear, left big toe, left small toe, left heel,
# right big toe, right small toe, right heel, left thumb/index/middle/ring/pinky tips,
# right thumb/index/middle/ring/pinky tips.
VERTEX_JOINT_NAMES = (
    "nose", "right_eye", "left_eye", "right_ear", "left_ear",
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel",
    "left_thumb", "left_index", "left_middle", "left_ring", "left_pinky",
    "right_thumb", "right_index", "right_middle", "right_ring", "right_pinky",
)
SMPLX_VERTEX_JOINT_IDS = (
    9120, 9929, 9448, 616, 6,
    5770, 5780, 8846, 8463, 8474, 8635,
    5361, 4933, 5058, 5169, 5286,
    8079, 7669, 7794, 7905, 8022,
)
SMPL_VERTEX_JOINT_IDS = (  # SMPL shares SMPL-H's topology; these are smplx's "smplh" ids
    332, 6260, 2800, 4071, 583,
    3216, 3226, 3387, 6617, 6624, 6787,
    2746, 2319, 2445, 2556, 2673,
    6191, 5782, 5905, 6016, 6133,
)

SMPLX_NECK_JOINT = 12  # the dynamic contour follows the model-space rotation of this joint


@dataclass(frozen=True)
class Topology:
    """Sizes that identify a model kind; the file must match them exactly."""

    kind: str
    num_vertices: int
    num_faces: int
    num_joints: int
    vertex_joint_ids: tuple


SMPLX = Topology("smplx", 10475, 20908, 55, SMPLX_VERTEX_JOINT_IDS)
SMPL = Topology("smpl", 6890, 13776, 24, SMPL_VERTEX_JOINT_IDS)
TOPOLOGIES = {topology.num_vertices: topology for topology in (SMPLX, SMPL)}

# SMPL-X shape directions: v1.1 holds 300 shape + 100 expression, v1.0 holds 10 + 10.
SMPLX_SHAPE_SPLITS = {400: (300, 100), 20: (10, 10)}

INDEX_KEYS = ("f", "kintree_table", "lmk_faces_idx", "dynamic_lmk_faces_idx")


def expected_shapes(topology: Topology) -> dict:
    """key -> expected shape; None marks a free size (the number of shape directions)."""
    v, j = topology.num_vertices, topology.num_joints
    shapes = {
        "v_template": (v, 3),
        "f": (topology.num_faces, 3),
        "shapedirs": (v, 3, None),
        "posedirs": (v, 3, 9 * (j - 1)),
        "J_regressor": (j, v),
        "weights": (v, j),
        "kintree_table": (2, j),
    }
    if topology.kind == "smplx":
        shapes.update({
            "lmk_faces_idx": (51,),
            "lmk_bary_coords": (51, 3),
            "dynamic_lmk_faces_idx": (NUM_CONTOUR_BINS, 17),
            "dynamic_lmk_bary_coords": (NUM_CONTOUR_BINS, 17, 3),
        })
    return shapes


# ---------------------------------------------------------------------------------------------
# Reading official pickles without chumpy or scipy.

class ChumpyStandIn:
    """Takes the place of any chumpy class while unpickling; keeps the pickled state.

    A chumpy array pickles as its __dict__, which holds the numbers under "x".
    """

    qualified_name = "chumpy"
    state = None

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


class SparseStandIn:
    """Takes the place of a scipy.sparse matrix while unpickling; keeps the pickled state."""

    qualified_name = "scipy.sparse"
    state = None

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


class OpaqueStandIn:
    """Any other class in the file: never imported, never run, only usable as an unused entry."""

    qualified_name = "unknown"

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _stand_in(base, module: str, name: str):
    return type(name, (base,), {"qualified_name": f"{module}.{name}"})


_NUMPY_NAMES = {"_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer"}
_NUMPY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                  "numpy.core.numeric", "numpy._core.numeric"}
_BUILTIN_NAMES = {"object", "dict", "list", "tuple", "set", "frozenset", "bytearray", "complex", "slice"}
_SPARSE_FORMATS = {"csc", "csr", "coo"}


class BodyModelUnpickler(pickle.Unpickler):
    """Unpickles official SMPL / SMPL-X .pkl files with numpy alone.

    chumpy classes become ChumpyStandIn, scipy.sparse matrices SparseStandIn, numpy arrays stay
    numpy arrays; every other class becomes an inert OpaqueStandIn, so no code from the file runs.
    """

    def find_class(self, module, name):
        if module.split(".")[0] == "chumpy":
            return _stand_in(ChumpyStandIn, module, name)
        if module.startswith("scipy.sparse") and name.split("_")[0] in _SPARSE_FORMATS:
            return _stand_in(SparseStandIn, module, name)
        if module in _NUMPY_MODULES and name in _NUMPY_NAMES:
            return super().find_class(module.replace("numpy.core", "numpy._core"), name)
        if (module, name) in {("copyreg", "_reconstructor"), ("_codecs", "encode")}:
            return super().find_class(module, name)
        if module == "builtins" and name in _BUILTIN_NAMES:
            return super().find_class(module, name)
        return _stand_in(OpaqueStandIn, module, name)


def _state_dict(state) -> dict:
    """A pickled __dict__, or the (dict, slots) pair objects with __slots__ pickle to."""
    if isinstance(state, tuple):
        merged = {}
        for part in state:
            merged.update(part or {})
        return merged
    return dict(state or {})


def _sparse_to_dense(matrix: SparseStandIn) -> np.ndarray:
    """A pickled csc / csr / coo matrix -> dense (rows, cols) float64 numpy array."""
    state = _state_dict(matrix.state)
    shape = tuple(int(size) for size in state.get("_shape", state.get("shape")))
    dense = np.zeros(shape, dtype=np.float64)
    data = np.asarray(state["data"], dtype=np.float64)
    layout = type(matrix).__name__.split("_")[0]
    if layout == "coo":
        rows, cols = np.asarray(state["row"]), np.asarray(state["col"])
    else:
        pointers = np.asarray(state["indptr"])
        outer = np.repeat(np.arange(len(pointers) - 1), np.diff(pointers))
        inner = np.asarray(state["indices"])
        rows, cols = (inner, outer) if layout == "csc" else (outer, inner)
    np.add.at(dense, (rows, cols), data)  # duplicates add up, as scipy's todense() does
    return dense


def _plain_value(value):
    """Stand-ins -> numpy arrays where they hold one; anything else unchanged."""
    if isinstance(value, ChumpyStandIn):
        state = _state_dict(value.state)
        return _plain_value(state["x"]) if "x" in state else value
    if isinstance(value, SparseStandIn):
        return _sparse_to_dense(value)
    return value


def _describe(value) -> str:
    if isinstance(value, (ChumpyStandIn, SparseStandIn, OpaqueStandIn)):
        return f"an object of class {value.qualified_name}"
    return f"a {type(value).__name__}"


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _read_entries(path: Path, keys) -> dict:
    """The entries `keys` of a body-model file that has them, as plain values; absent keys left out."""
    magic = b""
    try:
        with open(path, "rb") as stream:
            magic = stream.read(4)
            stream.seek(0)
            if magic == b"PK\x03\x04":
                with np.load(stream, allow_pickle=False) as archive:
                    return {key: archive[key] for key in keys if key in archive.files}
            contents = BodyModelUnpickler(stream, encoding="latin1").load()
    except FileNotFoundError:
        raise BodyModelError(f"{path}: no such body-model file") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            pickle.UnpicklingError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        reason = _first_line(error) if magic[:1] in (b"\x80", b"PK") else \
            "neither an .npz archive nor a pickled model: the file starts with neither's signature"
        raise BodyModelError(f"{path}: not a readable SMPL or SMPL-X model file ({reason})") from None
    if not isinstance(contents, dict):
        raise BodyModelError(f"{path}: not an SMPL or SMPL-X model file (it holds {_describe(contents)}, "
                             "not a dictionary of arrays)")
    return {key: _plain_value(contents[key]) for key in keys if key in contents}


# ---------------------------------------------------------------------------------------------
# Validated model data.

@dataclass
class BodyModelData:
    """A body-model file's arrays, checked.

    kind: "smplx" or "smpl". arrays: float32 numpy for geometry ("v_template" (V, 3) metres,
    "shapedirs" (V, 3, S), "posedirs" (V, 3, 9 (J-1)), "J_regressor" (J, V), "weights" (V, J),
    barycentric coordinates), int64 numpy for indices ("f" (F, 3), "kintree_table" (2, J),
    landmark faces). parents: Python list of J ints, parents[0] = -1, parents[j] < j.
    """

    kind: str
    arrays: dict
    parents: list
    path: Path

    @property
    def topology(self) -> Topology:
        return SMPLX if self.kind == "smplx" else SMPL

    @property
    def num_shape_dirs(self) -> int:
        """How many shape (beta) directions the file holds."""
        total = self.arrays["shapedirs"].shape[2]
        return SMPLX_SHAPE_SPLITS[total][0] if self.kind == "smplx" else total

    @property
    def num_expression_dirs(self) -> int:
        """How many expression directions the file holds (0 for SMPL)."""
        total = self.arrays["shapedirs"].shape[2]
        return SMPLX_SHAPE_SPLITS[total][1] if self.kind == "smplx" else 0

    def shape_dirs(self, count: int) -> np.ndarray:
        """(V, 3, count) float32, the first `count` shape directions."""
        return self.arrays["shapedirs"][:, :, :count]

    def expression_dirs(self, count: int) -> np.ndarray:
        """(V, 3, count) float32, the first `count` expression directions (SMPL-X only)."""
        start = self.num_shape_dirs
        return self.arrays["shapedirs"][:, :, start:start + count]


def _format_shape(shape) -> str:
    sizes = ["S" if size is None else str(size) for size in shape]
    return "(" + ", ".join(sizes) + (",)" if len(sizes) == 1 else ")")


def _check_array(path: Path, key: str, value, expected) -> np.ndarray:
    if isinstance(value, (ChumpyStandIn, SparseStandIn, OpaqueStandIn, dict)):
        raise BodyModelError(f"{path}: key '{key}' holds {_describe(value)}, not an array of shape "
                             f"{_format_shape(expected)}")
    array = np.asarray(value)
    fits = array.ndim == len(expected) and all(want is None or want == size
                                               for want, size in zip(expected, array.shape))
    if not fits:
        raise BodyModelError(f"{path}: key '{key}' has shape {tuple(array.shape)}; "
                             f"expected {_format_shape(expected)}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise BodyModelError(f"{path}: key '{key}' has dtype {array.dtype}; expected numbers")
    return array


def _check_indices(path: Path, key: str, indices: np.ndarray, limit: int, what: str) -> None:
    if indices.size and (indices.min() < 0 or indices.max() >= limit):
        raise BodyModelError(f"{path}: key '{key}' holds indices in [{indices.min()}, {indices.max()}]; "
                             f"expected {what} in [0, {limit - 1}]")


def _parents_from_kintree(path: Path, kintree: np.ndarray) -> list:
    """kintree_table (2, J): row 0 the parents (root's is -1 or 2^32 - 1) -> list, root = -1."""
    parents = [-1] + [int(parent) for parent in kintree[0, 1:]]
    for joint, parent in enumerate(parents[1:], start=1):
        if not 0 <= parent < joint:
            raise BodyModelError(f"{path}: key 'kintree_table' gives joint {joint} the parent {parent}; "
                                 "expected every parent to come before its child")
    return parents


def _check_shape_dir_count(path: Path, topology: Topology, shape_dirs: np.ndarray) -> None:
    """SMPL-X files hold 400 (v1.1: 300 shape + 100 expression) or 20 (v1.0) directions; SMPL at least one."""
    count = shape_dirs.shape[2]
    if topology.kind == "smplx" and count not in SMPLX_SHAPE_SPLITS:
        raise BodyModelError(f"{path}: key 'shapedirs' has shape {tuple(shape_dirs.shape)}; expected "
                             f"({SMPLX.num_vertices}, 3, 400) (v1.1) or ({SMPLX.num_vertices}, 3, 20) (v1.0)")
    if count == 0:
        raise BodyModelError(f"{path}: key 'shapedirs' has shape {tuple(shape_dirs.shape)}; "
                             "expected at least one shape direction")


def _topology_of(path: Path, template) -> Topology:
    """The topology whose vertex count v_template, (V, 3), has; BodyModelError for anything else."""
    if not isinstance(template, (ChumpyStandIn, SparseStandIn, OpaqueStandIn, dict)):
        template = np.asarray(template)
        topology = TOPOLOGIES.get(template.shape[0]) if template.ndim == 2 and template.shape[1] == 3 else None
        if topology is not None:
            return topology
        found = f"has shape {tuple(template.shape)}"
    else:
        found = f"holds {_describe(template)}"
    raise BodyModelError(f"{path}: key 'v_template' {found}; expected ({SMPLX.num_vertices}, 3) for SMPL-X "
                         f"or ({SMPL.num_vertices}, 3) for SMPL")


def load_body_model(path) -> BodyModelData:
    """Read and check an SMPL-X (.npz, .pkl) or SMPL (.pkl, .npz) model file.

    The kind comes from the vertex count of v_template (10475 SMPL-X, 6890 SMPL). Official .pkl
    files (chumpy arrays, a scipy.sparse J_regressor) load without chumpy or scipy.
    Raises BodyModelError naming the file and key for an unreadable file, a missing key, a wrong
    shape or out-of-range indices.
    """
    path = Path(path)
    all_keys = set(expected_shapes(SMPLX)) | set(expected_shapes(SMPL))
    entries = _read_entries(path, sorted(all_keys))
    if "v_template" not in entries:
        raise BodyModelError(f"{path}: key 'v_template' is missing; not an SMPL or SMPL-X model file")
    topology = _topology_of(path, entries["v_template"])

    arrays = {}
    for key, expected in expected_shapes(topology).items():
        if key not in entries:
            raise BodyModelError(f"{path}: key '{key}' is missing; expected an array of shape "
                                 f"{_format_shape(expected)} ({topology.kind})")
        array = _check_array(path, key, entries[key], expected)
        if key == "shapedirs":
            _check_shape_dir_count(path, topology, array)
        if key in INDEX_KEYS:
            arrays[key] = array.astype(np.int64)
        else:
            if not np.all(np.isfinite(array)):
                raise BodyModelError(f"{path}: key '{key}' holds NaN or infinite values")
            arrays[key] = np.ascontiguousarray(array, dtype=np.float32)

    _check_indices(path, "f", arrays["f"], topology.num_vertices, "vertex indices")
    if topology.kind == "smplx":
        _check_indices(path, "lmk_faces_idx", arrays["lmk_faces_idx"], topology.num_faces, "face indices")
        _check_indices(path, "dynamic_lmk_faces_idx", arrays["dynamic_lmk_faces_idx"], topology.num_faces,
                       "face indices")
    parents = _parents_from_kintree(path, arrays["kintree_table"])
    return BodyModelData(kind=topology.kind, arrays=arrays, parents=parents, path=path)


# ---------------------------------------------------------------------------------------------
# The layer.

def _dirs_matrix(directions: np.ndarray) -> np.ndarray:
    """(V, 3, C) -> (C, V * 3), so that coefficients @ matrix gives flat (x, y, z) offsets."""
    return np.ascontiguousarray(directions.reshape(-1, directions.shape[2]).T)


def _check_input(name: str, tensor: torch.Tensor, trailing: tuple) -> None:
    if tensor.dim() != len(trailing) + 1 or tuple(tensor.shape[1:]) != trailing:
        expected = "(N, " + ", ".join(str(size) for size in trailing) + ")"
        raise InputError(f"BodyModel: argument '{name}' has shape {tuple(tensor.shape)}; expected {expected}")


class BodyModel(torch.nn.Module):
    """SMPL-X or SMPL from rotation matrices, for export.

    Attributes: kind ("smplx" / "smpl"), parents (list of J ints), faces ((F, 3) int64 numpy),
    num_betas, num_expression, num_joints_out (144 SMPL-X, 45 SMPL), joint_vertex_ids (the sorted
    vertices joints_only skins, int64 numpy). All model arrays are non-persistent float32 buffers.
    """

    def __init__(self, data: BodyModelData, num_betas: int = 10, num_expression: int = 10):
        super().__init__()
        self.kind = data.kind
        self.parents = list(data.parents)
        self.faces = data.arrays["f"].astype(np.int64)
        if not 0 < num_betas <= data.num_shape_dirs:
            raise BodyModelError(f"{data.path}: num_betas={num_betas} asked, the file has "
                                 f"{data.num_shape_dirs} shape directions")
        if data.kind == "smpl":
            num_expression = 0
        elif not 0 <= num_expression <= data.num_expression_dirs:
            raise BodyModelError(f"{data.path}: num_expression={num_expression} asked, the file has "
                                 f"{data.num_expression_dirs} expression directions")
        self.num_betas = num_betas
        self.num_expression = num_expression
        self.num_skeleton_joints = len(self.parents)

        arrays = data.arrays
        directions = data.shape_dirs(num_betas)
        if num_expression:
            directions = np.concatenate([directions, data.expression_dirs(num_expression)], axis=2)
        regressor = arrays["J_regressor"].astype(np.float64)
        template = arrays["v_template"]

        # The joint regressor folded into the blend shapes (in float64): J = J_template + coeffs @ J_dirs.
        joint_template = regressor @ template.astype(np.float64)
        joint_dirs = np.stack([regressor @ directions[:, :, c].astype(np.float64)
                               for c in range(directions.shape[2])], axis=2)

        vertex_joint_ids = np.asarray(data.topology.vertex_joint_ids, dtype=np.int64)
        if data.kind == "smplx":
            faces = self.faces
            landmark_corners = faces[arrays["lmk_faces_idx"]]  # (51, 3)
            contour_corners = faces[arrays["dynamic_lmk_faces_idx"]].reshape(-1, 3)  # (79 * 17, 3)
            landmark_barycentric = arrays["lmk_bary_coords"]
            contour_barycentric = arrays["dynamic_lmk_bary_coords"].reshape(-1, 3)
        else:
            landmark_corners = contour_corners = np.zeros((0, 3), dtype=np.int64)
            landmark_barycentric = contour_barycentric = np.zeros((0, 3), dtype=np.float32)
        subset = np.unique(np.concatenate([vertex_joint_ids, landmark_corners.ravel(), contour_corners.ravel()]))
        self.joint_vertex_ids = subset
        self.num_joints_out = (self.num_skeleton_joints + len(vertex_joint_ids) + len(landmark_corners)
                               + len(contour_corners) // NUM_CONTOUR_BINS)

        def buffer(name, array, dtype=torch.float32):
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(array), dtype=dtype), persistent=False)

        # Whole mesh, for forward().
        buffer("v_template", template)
        buffer("blend_dirs", _dirs_matrix(directions))
        buffer("pose_dirs", _dirs_matrix(arrays["posedirs"]))
        buffer("lbs_weights", arrays["weights"])
        buffer("vertex_joint_ids", vertex_joint_ids, torch.int64)
        buffer("landmark_corners", landmark_corners, torch.int64)
        buffer("contour_corners", contour_corners, torch.int64)
        # Skeleton from the folded regressor, for both.
        buffer("joint_template", joint_template)
        buffer("joint_dirs", _dirs_matrix(joint_dirs))
        buffer("landmark_barycentric", landmark_barycentric)
        buffer("contour_barycentric", contour_barycentric)
        # Only the vertices behind vertex joints and landmarks, for joints_only().
        position_in_subset = np.searchsorted(subset, np.arange(template.shape[0]))
        buffer("subset_template", template[subset])
        buffer("subset_blend_dirs", _dirs_matrix(directions[subset]))
        buffer("subset_pose_dirs", _dirs_matrix(arrays["posedirs"][subset]))
        buffer("subset_weights", arrays["weights"][subset])
        buffer("subset_vertex_joint_ids", position_in_subset[vertex_joint_ids], torch.int64)
        buffer("subset_landmark_corners", position_in_subset[landmark_corners], torch.int64)
        buffer("subset_contour_corners", position_in_subset[contour_corners], torch.int64)

    # -- inputs ---------------------------------------------------------------------------------
    def _local_rotations_and_coefficients(self, betas, global_orient, body_pose, left_hand_pose,
                                          right_hand_pose, jaw_pose, expression, leye_pose, reye_pose):
        """Check the inputs; -> (local rotations (N, J, 3, 3) in joint order, coefficients (N, C))."""
        _check_input("betas", betas, (self.num_betas,))
        _check_input("global_orient", global_orient, (3, 3))
        if self.kind == "smpl":
            given = [name for name, value in [("left_hand_pose", left_hand_pose), ("right_hand_pose", right_hand_pose),
                                              ("jaw_pose", jaw_pose), ("expression", expression),
                                              ("leye_pose", leye_pose), ("reye_pose", reye_pose)]
                     if value is not None]
            if given:
                raise InputError(f"BodyModel: argument '{given[0]}' given to an SMPL model, which has no such part")
            _check_input("body_pose", body_pose, (self.num_skeleton_joints - 1, 3, 3))
            return torch.cat([global_orient[:, None], body_pose], dim=1), betas

        _check_input("body_pose", body_pose, (21, 3, 3))
        identity = torch.eye(3, dtype=global_orient.dtype, device=global_orient.device).expand_as(global_orient)
        parts = {"jaw_pose": jaw_pose, "leye_pose": leye_pose, "reye_pose": reye_pose}
        for name, value in parts.items():
            if value is not None:
                _check_input(name, value, (3, 3))
        hands = {"left_hand_pose": left_hand_pose, "right_hand_pose": right_hand_pose}
        for name, value in hands.items():
            if value is not None:
                _check_input(name, value, (15, 3, 3))
        hand_identity = identity[:, None].expand(-1, 15, -1, -1)
        rotations = torch.cat([
            global_orient[:, None],
            body_pose,
            (identity if jaw_pose is None else jaw_pose)[:, None],
            (identity if leye_pose is None else leye_pose)[:, None],
            (identity if reye_pose is None else reye_pose)[:, None],
            hand_identity if left_hand_pose is None else left_hand_pose,
            hand_identity if right_hand_pose is None else right_hand_pose,
        ], dim=1)
        if expression is None:
            expression = betas.new_zeros(betas.shape[0], self.num_expression)
        _check_input("expression", expression, (self.num_expression,))
        return rotations, torch.cat([betas, expression], dim=1)

    # -- shared steps ---------------------------------------------------------------------------
    def _skeleton(self, rotations, coefficients):
        """-> (global rotations (N, J, 3, 3), posed joints (N, J, 3), skinning translations (N, J, 3))."""
        rest_joints = self.joint_template + blend_shapes(coefficients, self.joint_dirs)
        return rigid_transform_chain(rotations, rest_joints, self.parents)

    @staticmethod
    def _posed_points(template, blend_dirs, pose_dirs, weights, rotations, coefficients, skeleton):
        """LBS of a set of points: template (V, 3), blend_dirs (C, V * 3), pose_dirs (9 (J - 1), V * 3)."""
        global_rotation, _, translations = skeleton
        shaped = template + blend_shapes(coefficients, blend_dirs)
        posed = shaped + blend_shapes(pose_features(rotations), pose_dirs)
        return skin(posed, weights, global_rotation, translations)

    def _all_joints(self, points, skeleton, vertex_joint_ids, landmark_corners, contour_corners):
        """Skeleton joints, then vertex joints, then (SMPL-X) static and dynamic landmarks from points."""
        global_rotation, posed_joints, _ = skeleton
        pieces = [posed_joints, points[:, vertex_joint_ids]]
        if self.kind == "smplx":
            pieces.append(barycentric_points(points, landmark_corners, self.landmark_barycentric))
            n = points.shape[0]
            candidates = barycentric_points(points, contour_corners, self.contour_barycentric)  # (N, 79 * 17, 3)
            one_hot = contour_bin_one_hot(global_rotation[:, SMPLX_NECK_JOINT])  # (N, 79)
            chosen = one_hot[:, None, :] @ candidates.reshape(n, NUM_CONTOUR_BINS, -1)  # (N, 1, 17 * 3)
            pieces.append(chosen.reshape(n, -1, 3))
        return torch.cat(pieces, dim=1)

    # -- public ---------------------------------------------------------------------------------
    def forward(self, betas, global_orient, body_pose, left_hand_pose=None, right_hand_pose=None,
                jaw_pose=None, expression=None, leye_pose=None, reye_pose=None):
        """Posed mesh and joints.

        SMPL-X: betas (N, B); global_orient (N, 3, 3); body_pose (N, 21, 3, 3); left_hand_pose,
        right_hand_pose (N, 15, 3, 3); jaw_pose (N, 3, 3); expression (N, E); leye_pose, reye_pose
        (N, 3, 3). Missing rotations are the identity, a missing expression is zero.
        SMPL: betas, global_orient, body_pose (N, 23, 3, 3) only.
        Returns vertices (N, V, 3) and joints (N, 144 | 45, 3), float32, model units (metres).
        """
        rotations, coefficients = self._local_rotations_and_coefficients(
            betas, global_orient, body_pose, left_hand_pose, right_hand_pose, jaw_pose, expression,
            leye_pose, reye_pose)
        skeleton = self._skeleton(rotations, coefficients)
        vertices = self._posed_points(self.v_template, self.blend_dirs, self.pose_dirs, self.lbs_weights,
                                      rotations, coefficients, skeleton)
        joints = self._all_joints(vertices, skeleton, self.vertex_joint_ids, self.landmark_corners,
                                  self.contour_corners)
        return vertices, joints

    def joints_only(self, betas, global_orient, body_pose, left_hand_pose=None, right_hand_pose=None,
                    jaw_pose=None, expression=None, leye_pose=None, reye_pose=None):
        """The joints of forward(), (N, 144 | 45, 3), skinning only the vertices they need."""
        rotations, coefficients = self._local_rotations_and_coefficients(
            betas, global_orient, body_pose, left_hand_pose, right_hand_pose, jaw_pose, expression,
            leye_pose, reye_pose)
        skeleton = self._skeleton(rotations, coefficients)
        points = self._posed_points(self.subset_template, self.subset_blend_dirs, self.subset_pose_dirs,
                                    self.subset_weights, rotations, coefficients, skeleton)
        return self._all_joints(points, skeleton, self.subset_vertex_joint_ids, self.subset_landmark_corners,
                                self.subset_contour_corners)


class JointsOnly(torch.nn.Module):
    """Wraps BodyModel.joints_only as a module's forward, for export."""

    def __init__(self, body_model: BodyModel):
        super().__init__()
        self.body_model = body_model

    def forward(self, betas, global_orient, body_pose, left_hand_pose=None, right_hand_pose=None,
                jaw_pose=None, expression=None, leye_pose=None, reye_pose=None):
        return self.body_model.joints_only(betas, global_orient, body_pose, left_hand_pose, right_hand_pose,
                                           jaw_pose, expression, leye_pose, reye_pose)
