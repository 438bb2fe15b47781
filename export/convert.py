"""`bodyrt convert smpl-to-smplx`: SMPL meshes or parameters -> SMPL-X parameters (ExPose supplement, sec. 3).

A posed SMPL mesh M' becomes a mesh M^ in SMPL-X topology through a correspondence: every SMPL-X
vertex i sits on SMPL triangle t_i (corners f_i) at barycentric coordinates (a_i, b_i, c_i), so
v^_i = a_i v'_f0 + b_i v'_f1 + c_i v'_f2, and a mask m_i drops vertices without a counterpart (eyes,
inner lips, ...). SMPL-X pose theta, shape beta, expression psi and translation t are then fitted to
M^ in three stages, each minimised with a trust-region Newton conjugate-gradient method (scipy's
"trust-ncg"; gradients and Hessian-vector products from torch autograd, in float64):

    1. pose only, edge loss     L1 = sum_(i,j) in E  m_i m_j |(v_i - v_j) - (v^_i - v^_j)|^2
    2. translation only         L2 = sum_i m_i |v_i + t - v^_i|^2
    3. everything               L3 = the same vertex loss over (theta, beta, psi, t)

E is the set of edges of the SMPL-X mesh. Fits are batched: a batch is one problem whose loss is the
sum of its fits' losses (each fit's parameters only touch its own term). Rotations are axis-angle;
hands are full 15-joint poses (the smplx package's use_pca=False, flat_hand_mean=True).

Correspondence file (.npz), one row per SMPL-X vertex:

    triangle           (V_x,)    int    t_i, index of the SMPL triangle the vertex lies on
    triangle_vertices  (V_x, 3)  int    f_i, that triangle's SMPL vertex indices
    barycentric        (V_x, 3)  float  (a_i, b_i, c_i), summing to 1
    valid              (V_x,)    bool   m_i
"""

import logging
import zipfile
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bodyrt.errors import BodyModelError, InputError
from bodyrt.export.body_model import SMPL, SMPLX, BodyModel, load_body_model
from bodyrt.export.rotations import axis_angle_to_matrix
from bodyrt.progress import progress, waiting

log = logging.getLogger("bodyrt")

CORRESPONDENCE_KEYS = ("triangle", "triangle_vertices", "barycentric", "valid")
BARYCENTRIC_SUM_TOLERANCE = 1e-4
NUM_BETAS = 10
NUM_EXPRESSION = 10

# The SMPL-X pose vector, in the body model's joint order: name -> number of joints.
POSE_PARTS = (("global_orient", 1), ("body_pose", 21), ("jaw_pose", 1), ("leye_pose", 1), ("reye_pose", 1),
              ("left_hand_pose", 15), ("right_hand_pose", 15))
NUM_POSE_JOINTS = sum(count for _, count in POSE_PARTS)  # 55
SMPL_SHARED_JOINTS = 22  # SMPL joints 0..21 are SMPL-X joints 0..21 (same tree, same order)

# (name, loss, free variables) of the supplement's three stages.
STAGES = (("pose", "edge", ("pose",)),
          ("translation", "vertex", ("translation",)),
          ("all", "vertex", ("pose", "betas", "expression", "translation")))
VARIABLE_SIZES = {"pose": 3 * NUM_POSE_JOINTS, "betas": NUM_BETAS, "expression": NUM_EXPRESSION, "translation": 3}


@dataclass
class Correspondence:
    """SMPL -> SMPL-X vertex correspondence (see the module doc); numpy arrays, one row per SMPL-X vertex."""

    triangle: np.ndarray
    triangle_vertices: np.ndarray
    barycentric: np.ndarray
    valid: np.ndarray

    def to_smplx_topology(self, smpl_vertices: np.ndarray) -> np.ndarray:
        """(N, 6890, 3) SMPL meshes -> (N, V_x, 3): v^_i = sum_k barycentric_ik v'_(f_ik)."""
        corners = smpl_vertices[:, self.triangle_vertices]  # (N, V_x, 3 corners, 3 xyz)
        return (corners * self.barycentric[None, :, :, None]).sum(axis=2)


@dataclass
class FitSettings:
    """Optimiser settings: iteration caps per stage and the gradient-norm tolerance of trust-ncg."""

    batch_size: int = 16
    max_iterations: tuple = (60, 20, 150)  # pose, translation, all
    # In the rescaled variables 1e-5 leaves the loss within about 1e-10 m^2 of its optimum; tighter
    # tolerances only run every stage to its iteration cap at over 100 Hessian products an iteration.
    gradient_tolerance: float = 1e-5
    method: str = "trust-ncg"


# ---------------------------------------------------------------------------------- correspondence

def require_npz(path: Path, error_type, what: str) -> None:
    """Raise error_type unless path is an .npz (NumPy's zip archive of arrays): a text file or a pickle
    would otherwise be reported by np.load as pickled data needing allow_pickle."""
    if not path.exists():
        raise error_type(f"{path}: no such {what}")
    if not path.is_file() or not zipfile.is_zipfile(path):
        kind = "a folder or device" if not path.is_file() else "not a zip archive"
        raise error_type(f"{path}: not an .npz {what} ({kind}; expected NumPy's .npz archive of arrays, "
                         "as written by numpy.savez)")


def load_correspondence(path) -> Correspondence:
    """Read and check a correspondence: bodyrt's .npz, or the SMPL-X authors' deformation-transfer
    setup .pkl (see load_deformation_transfer); BodyModelError names the file and key at fault."""
    path = Path(path)
    if path.suffix.lower() == ".pkl":
        return load_deformation_transfer(path)
    require_npz(path, BodyModelError, "correspondence file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            entries = {key: archive[key] for key in CORRESPONDENCE_KEYS if key in archive.files}
    except FileNotFoundError:
        raise BodyModelError(f"{path}: no such correspondence file") from None
    except (OSError, ValueError) as error:
        raise BodyModelError(f"{path}: not a readable .npz correspondence file ({error})") from None
    missing = [key for key in CORRESPONDENCE_KEYS if key not in entries]
    if missing:
        raise BodyModelError(f"{path}: key '{missing[0]}' is missing; a correspondence file holds "
                             f"{', '.join(CORRESPONDENCE_KEYS)}")
    rows = SMPLX.num_vertices
    expected = {"triangle": (rows,), "triangle_vertices": (rows, 3), "barycentric": (rows, 3), "valid": (rows,)}
    for key, shape in expected.items():
        if entries[key].shape != shape:
            raise BodyModelError(f"{path}: key '{key}' has shape {entries[key].shape}; expected {shape}")
    triangle = entries["triangle"].astype(np.int64)
    corners = entries["triangle_vertices"].astype(np.int64)
    barycentric = entries["barycentric"].astype(np.float64)
    if triangle.min() < 0 or triangle.max() >= SMPL.num_faces:
        raise BodyModelError(f"{path}: key 'triangle' holds indices in [{triangle.min()}, {triangle.max()}]; "
                             f"expected SMPL triangles in [0, {SMPL.num_faces - 1}]")
    if corners.min() < 0 or corners.max() >= SMPL.num_vertices:
        raise BodyModelError(f"{path}: key 'triangle_vertices' holds indices in [{corners.min()}, "
                             f"{corners.max()}]; expected SMPL vertices in [0, {SMPL.num_vertices - 1}]")
    worst = float(np.abs(barycentric.sum(axis=1) - 1.0).max())
    if not np.isfinite(barycentric).all() or worst > BARYCENTRIC_SUM_TOLERANCE:
        raise BodyModelError(f"{path}: key 'barycentric' rows must be finite and sum to 1 (worst off by {worst:.3g})")
    valid = entries["valid"].astype(bool)
    if not valid.any():
        raise BodyModelError(f"{path}: key 'valid' marks no vertex as valid")
    return Correspondence(triangle, corners, barycentric, valid)


def _sparse_triplets(matrix, path: Path):
    """A pickled scipy csc / csr / coo matrix (a SparseStandIn) -> (shape, rows, cols, values)."""
    from bodyrt.export.body_model import _state_dict

    state = _state_dict(matrix.state)
    try:
        shape = tuple(int(size) for size in state.get("_shape", state.get("shape")))
        values = np.asarray(state["data"], dtype=np.float64)
        layout = type(matrix).__name__.split("_")[0]
        if layout == "coo":
            rows, cols = np.asarray(state["row"], dtype=np.int64), np.asarray(state["col"], dtype=np.int64)
        else:
            pointers = np.asarray(state["indptr"], dtype=np.int64)
            outer = np.repeat(np.arange(len(pointers) - 1), np.diff(pointers))
            inner = np.asarray(state["indices"], dtype=np.int64)
            rows, cols = (inner, outer) if layout == "csc" else (outer, inner)
    except (KeyError, TypeError, ValueError) as error:
        raise BodyModelError(f"{path}: key 'mtx' is not a readable sparse matrix ({error})") from None
    return shape, rows, cols, values


def load_deformation_transfer(path) -> Correspondence:
    """The SMPL-X transfer_model tool's setup file (`smpl2smplx_deftrafo_setup.pkl`) as a correspondence.

    The file pickles a dict whose `mtx` is a sparse (V_x, 2 x 6890) matrix: each SMPL-X vertex as a
    weighted sum of SMPL vertices (first 6890 columns) and of SMPL vertex normals (last 6890, which
    bodyrt, like the tool's default, leaves out); or whose `matrix` is the dense (V_x, 6890) position
    part. Read with bodyrt's safe unpickler (no code from the file runs, scipy is not needed). Rows
    without weight are marked invalid; each row's weights must sum to 1.
    """
    from bodyrt.export.body_model import BodyModelUnpickler, SparseStandIn

    path = Path(path)
    try:
        with open(path, "rb") as stream:
            setup = BodyModelUnpickler(stream, encoding="latin1").load()
    except FileNotFoundError:
        raise BodyModelError(f"{path}: no such correspondence file") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise BodyModelError(f"{path}: not a readable deformation-transfer setup pickle ({error})") from None
    if not isinstance(setup, dict) or not ({"mtx", "matrix"} & set(setup)):
        raise BodyModelError(f"{path}: a deformation-transfer setup file holds 'mtx' (sparse) or 'matrix' (dense); "
                             "found neither")
    smpl_count, smplx_count = SMPL.num_vertices, SMPLX.num_vertices
    if "mtx" in setup and isinstance(setup["mtx"], SparseStandIn):
        shape, rows, cols, values = _sparse_triplets(setup["mtx"], path)
    else:
        dense = np.asarray(setup.get("mtx", setup.get("matrix")))
        if dense.ndim != 2 or not np.issubdtype(dense.dtype, np.number):
            raise BodyModelError(f"{path}: the deformation-transfer matrix is not a 2-D array of numbers")
        shape = dense.shape
        rows, cols = np.nonzero(dense)
        values = dense[rows, cols].astype(np.float64)
    if shape[0] != smplx_count or shape[1] not in (smpl_count, 2 * smpl_count):
        raise BodyModelError(f"{path}: deformation-transfer matrix of shape {shape}; expected ({smplx_count}, "
                             f"{smpl_count}) or ({smplx_count}, {2 * smpl_count}) for SMPL -> SMPL-X")
    positions = (cols < smpl_count) & (values != 0)
    rows, cols, values = rows[positions], cols[positions], values[positions]
    order = np.lexsort((cols, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    counts = np.bincount(rows, minlength=smplx_count)
    width = max(int(counts.max(initial=0)), 1)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    corners = np.zeros((smplx_count, width), dtype=np.int64)
    weights = np.zeros((smplx_count, width), dtype=np.float64)
    corners[rows, slot], weights[rows, slot] = cols, values
    valid = counts > 0
    if not valid.any():
        raise BodyModelError(f"{path}: the deformation-transfer matrix has no weight on SMPL vertex positions")
    sums = weights.sum(axis=1)[valid]
    worst = float(np.abs(sums - 1.0).max())
    if not np.isfinite(weights).all() or worst > BARYCENTRIC_SUM_TOLERANCE:
        raise BodyModelError(f"{path}: deformation-transfer rows must be finite and sum to 1 (worst off by {worst:.3g})")
    return Correspondence(triangle=np.full(smplx_count, -1, dtype=np.int64), triangle_vertices=corners,
                          barycentric=weights, valid=valid)


def write_correspondence(path, correspondence: Correspondence) -> Path:
    path = Path(path)
    np.savez(path, **{key: getattr(correspondence, key) for key in CORRESPONDENCE_KEYS})
    return path


def closest_points_on_triangles(points: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray):
    """Closest point to each of points (M, 3) on triangle (a, b, c) (each (M, 3)).

    Returns (barycentric (M, 3), squared distance (M,)). Inside the triangle it is the plane
    projection; otherwise the nearest of the three edge points (segments clamped to their ends).
    Degenerate triangles fall back to the edges.
    """
    ab, ac, ap = b - a, c - a, points - a
    d00, d01, d11 = (ab * ab).sum(1), (ab * ac).sum(1), (ac * ac).sum(1)
    d20, d21 = (ap * ab).sum(1), (ap * ac).sum(1)
    denominator = d00 * d11 - d01 * d01
    safe = np.where(np.abs(denominator) > 1e-20, denominator, 1.0)
    v = (d11 * d20 - d01 * d21) / safe
    w = (d00 * d21 - d01 * d20) / safe
    candidates = [np.stack([1.0 - v - w, v, w], axis=1)]
    inside = (v >= 0) & (w >= 0) & (v + w <= 1) & (np.abs(denominator) > 1e-20)
    corners = (a, b, c)
    for first, second in ((0, 1), (1, 2), (2, 0)):
        start, edge = corners[first], corners[second] - corners[first]
        t = np.clip(((points - start) * edge).sum(1) / np.maximum((edge * edge).sum(1), 1e-20), 0.0, 1.0)
        weights = np.zeros((len(points), 3))
        weights[:, first], weights[:, second] = 1.0 - t, t
        candidates.append(weights)
    distances = []
    for index, weights in enumerate(candidates):
        nearest = weights[:, :1] * a + weights[:, 1:2] * b + weights[:, 2:] * c
        squared = ((points - nearest) ** 2).sum(1)
        distances.append(np.where(inside, squared, np.inf) if index == 0 else squared)
    best = np.argmin(np.stack(distances, axis=1), axis=1)
    rows = np.arange(len(points))
    return np.stack(candidates, axis=1)[rows, best], np.stack(distances, axis=1)[rows, best]


def nearest_point_correspondence(smpl_vertices: np.ndarray, smpl_faces: np.ndarray, smplx_vertices: np.ndarray,
                                 max_distance: float, candidates: int = 16) -> Correspondence:
    """The supplement's construction for two registered templates: each SMPL-X vertex's nearest point
    on the SMPL mesh, among the `candidates` triangles with the nearest centroids; vertices farther
    than max_distance (metres) are marked invalid."""
    from scipy.spatial import cKDTree

    centroids = smpl_vertices[smpl_faces].mean(axis=1)
    _, nearest_triangles = cKDTree(centroids).query(smplx_vertices, k=candidates)  # (V_x, K)
    count = len(smplx_vertices)
    flat = nearest_triangles.reshape(-1)
    corners = smpl_vertices[smpl_faces[flat]]  # (V_x K, 3, 3)
    barycentric, squared = closest_points_on_triangles(np.repeat(smplx_vertices, candidates, axis=0),
                                                       corners[:, 0], corners[:, 1], corners[:, 2])
    choice = np.argmin(squared.reshape(count, candidates), axis=1)
    picked = np.arange(count) * candidates + choice
    triangle = flat[picked]
    return Correspondence(triangle=triangle.astype(np.int64),
                          triangle_vertices=smpl_faces[triangle].astype(np.int64),
                          barycentric=barycentric[picked],
                          valid=np.sqrt(squared[picked]) <= max_distance)


# ----------------------------------------------------------------------------------------- inputs

def _axis_angles(values: np.ndarray, joints: int, name: str, path: Path) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[None]
    if values.shape[1:] not in ((joints * 3,), (joints, 3)):
        raise InputError(f"{path}: '{name}' has shape {values.shape}; expected (N, {joints * 3}) or (N, {joints}, 3) "
                         "axis-angle")
    return values.reshape(len(values), joints, 3)


def smpl_inputs(path, smpl_model=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read SMPL meshes or parameters from an .npz.

    Meshes: `vertices` (N, 6890, 3) or (6890, 3), metres. Parameters (need smpl_model): `betas`
    (N, B), `global_orient` (N, 3) and `body_pose` (N, 69) or (N, 23, 3) axis-angle, or `pose`
    (N, 72) for both; optional `transl` (N, 3). Returns (meshes (N, 6890, 3) float64, the SMPL pose
    of joints 0..21 (N, 22, 3) when parameters were given, else None).
    """
    path = Path(path)
    require_npz(path, InputError, "input file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            entries = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise InputError(f"{path}: no such input file") from None
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable .npz file ({error})") from None
    if "vertices" in entries:
        meshes = np.asarray(entries["vertices"], dtype=np.float64)
        meshes = meshes[None] if meshes.ndim == 2 else meshes
        if meshes.ndim != 3 or meshes.shape[1:] != (SMPL.num_vertices, 3):
            raise InputError(f"{path}: 'vertices' has shape {entries['vertices'].shape}; expected "
                             f"(N, {SMPL.num_vertices}, 3) SMPL meshes")
        return meshes, None
    if "pose" in entries:
        pose = _axis_angles(entries["pose"], 24, "pose", path)
    elif "global_orient" in entries and "body_pose" in entries:
        pose = np.concatenate([_axis_angles(entries["global_orient"], 1, "global_orient", path),
                               _axis_angles(entries["body_pose"], 23, "body_pose", path)], axis=1)
    else:
        raise InputError(f"{path}: holds neither 'vertices' (SMPL meshes) nor SMPL parameters "
                         "('betas' with 'global_orient' and 'body_pose', or 'pose')")
    if smpl_model is None:
        raise InputError(f"{path}: holds SMPL parameters; give the SMPL model file with --smpl-model")
    betas = np.asarray(entries.get("betas", entries.get("shape", np.zeros((len(pose), NUM_BETAS)))), dtype=np.float64)
    betas = betas[None] if betas.ndim == 1 else betas
    translation = np.asarray(entries.get("transl", np.zeros((len(pose), 3))), dtype=np.float64).reshape(-1, 3)
    if not len(betas) == len(pose) == len(translation):
        raise InputError(f"{path}: {len(pose)} poses, {len(betas)} betas and {len(translation)} translations; "
                         "expected one of each per body")
    return smpl_meshes(smpl_model, pose, betas) + translation[:, None], pose[:, :SMPL_SHARED_JOINTS]


def smpl_meshes(smpl_model, pose: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """SMPL file + pose (N, 24, 3) axis-angle + betas (N, B) -> meshes (N, 6890, 3) float64."""
    data = load_body_model(smpl_model)
    if data.kind != "smpl":
        raise BodyModelError(f"{smpl_model}: expected an SMPL model file (6890 vertices), got {data.kind.upper()}")
    model = BodyModel(data, num_betas=betas.shape[1]).double()
    with torch.no_grad():
        rotations = axis_angle_to_matrix(torch.from_numpy(pose))
        vertices, _ = model(betas=torch.from_numpy(betas), global_orient=rotations[:, 0], body_pose=rotations[:, 1:])
    return vertices.numpy()


# ------------------------------------------------------------------------------------------ fitting

def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """(F, 3) triangles -> (E, 2) unique undirected edges, smaller index first."""
    pairs = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.unique(np.sort(pairs, axis=1), axis=0)


class SmplxFitProblem(torch.nn.Module):
    """SMPL-X vertices of a batch of parameter sets, and the supplement's losses against targets.

    targets (B, V_x, 3) float64 metres; valid (V_x,) bool; edges (E, 2) of the SMPL-X mesh.
    """

    def __init__(self, body_model: BodyModel, targets: np.ndarray, valid: np.ndarray, edges: np.ndarray):
        super().__init__()
        self.body_model = body_model
        self.batch = len(targets)
        self.register_buffer("targets", torch.from_numpy(targets))
        self.register_buffer("weights", torch.from_numpy(valid.astype(np.float64)))
        valid_edges = edges[valid[edges[:, 0]] & valid[edges[:, 1]]]
        self.register_buffer("edges", torch.from_numpy(valid_edges))

    def vertices(self, variables: dict) -> torch.Tensor:
        """variables: pose (B, 165) axis-angle, betas (B, 10), expression (B, 10), translation (B, 3)
        -> (B, V_x, 3) posed and translated SMPL-X vertices."""
        rotations = axis_angle_to_matrix(variables["pose"].reshape(self.batch, NUM_POSE_JOINTS, 3))
        parts, start = {}, 0
        for name, count in POSE_PARTS:
            parts[name] = rotations[:, start] if count == 1 else rotations[:, start:start + count]
            start += count
        vertices, _ = self.body_model(betas=variables["betas"], expression=variables["expression"], **parts)
        return vertices + variables["translation"][:, None]

    def losses(self, variables: dict, kind: str) -> torch.Tensor:
        """(B,) per-fit loss: "edge" (L1) or "vertex" (L2, L3)."""
        vertices = self.vertices(variables)
        if kind == "edge":
            first, second = self.edges[:, 0], self.edges[:, 1]
            difference = (vertices[:, first] - vertices[:, second]) - (self.targets[:, first] - self.targets[:, second])
            return (difference * difference).sum(dim=(1, 2))
        difference = vertices - self.targets
        return ((difference * difference).sum(dim=2) * self.weights).sum(dim=1)


def subtree_matrix(parents: list) -> np.ndarray:
    """(J, J) float: entry [k, j] is 1 when joint k is j or one of its descendants."""
    inside = np.eye(len(parents))
    for joint in range(len(parents) - 1, 0, -1):  # children come after their parents
        inside[:, parents[joint]] += inside[:, joint]
    return np.minimum(inside, 1.0)


def curvature_scales(body_model: BodyModel, valid: np.ndarray, edges: np.ndarray, kind: str) -> dict:
    """Per-variable scales sqrt(d) for the change of variables in BatchObjective.

    d is the Gauss-Newton Hessian diagonal of one fit's loss at the rest pose, from the model alone:
    turning joint j about axis a moves vertex v by s_vj (a x (v - J_j)), s_vj the skinning weight of
    j's subtree; a blend direction moves v by its offset; translation moves every vertex by one.
    Vertex loss: d = 2 sum_v m_v |motion_v|^2; edge loss: d = 2 sum_(p,q) |motion_p - motion_q|^2 over
    valid edges. Returns {"pose" (165,), "betas" (10,), "expression" (10,), "translation" (3,)}.
    """
    template = body_model.v_template.double().numpy()
    joints = body_model.joint_template.double().numpy()  # (J, 3) rest joints at zero betas
    subtree_weights = body_model.lbs_weights.double().numpy() @ subtree_matrix(body_model.parents)  # (V, J)
    directions = body_model.blend_dirs.double().numpy().reshape(-1, template.shape[0], 3)  # (C, V, 3)
    mask = valid.astype(np.float64)
    arms = subtree_weights[:, :, None] * (template[:, None] - joints[None])  # (V, J, 3)
    axes = np.eye(3)
    if kind == "edge":
        keep = valid[edges[:, 0]] & valid[edges[:, 1]]
        first, second = edges[keep, 0], edges[keep, 1]
        arm_change = arms[first] - arms[second]  # (E, J, 3)
        pose = np.stack([(np.cross(axis, arm_change) ** 2).sum(axis=(0, 2)) for axis in axes], axis=1)
        blend = ((directions[:, first] - directions[:, second]) ** 2).sum(axis=(1, 2))
        translation = np.zeros(3)
    else:
        pose = np.stack([((np.cross(axis, arms) ** 2).sum(axis=2) * mask[:, None]).sum(axis=0) for axis in axes],
                        axis=1)
        blend = ((directions ** 2).sum(axis=2) * mask).sum(axis=1)
        translation = np.full(3, mask.sum())
    curvature = 2.0 * np.concatenate([pose.reshape(-1), blend, translation])
    # Variables the loss hardly sees (e.g. invalid eyes) keep a floor, not a division by zero.
    scale = np.sqrt(np.maximum(curvature, 1e-6 * curvature.max()))
    sizes = [("pose", VARIABLE_SIZES["pose"]), ("betas", NUM_BETAS), ("expression", NUM_EXPRESSION), ("translation", 3)]
    scales, start = {}, 0
    for name, size in sizes:
        scales[name] = scale[start:start + size]
        start += size
    return scales


class BatchObjective:
    """A stage's summed loss as a function of the flat, scaled free variables, for scipy.

    The optimiser sees y = x * scale, scale = sqrt of the curvature estimate of each variable (see
    curvature_scales): a diagonal change of variables that makes the Hessian's diagonal about one,
    so the conjugate-gradient steps inside trust-ncg converge in far fewer Hessian products (the
    raw curvatures span seven orders of magnitude, finger joints to translation).
    Caches the autograd graph of the last point: trust-ncg asks for many Hessian-vector products at
    one point, each is then one extra backward pass.
    """

    def __init__(self, problem: SmplxFitProblem, variables: dict, free: tuple, kind: str, scales: dict):
        self.problem, self.variables, self.free, self.kind = problem, variables, free, kind
        self.scales = {name: torch.from_numpy(scales[name]).expand_as(variables[name]) for name in free}
        self.point = None
        self.hessian_products = 0

    def pack(self) -> np.ndarray:
        return torch.cat([(self.variables[name] * self.scales[name]).reshape(-1) for name in self.free]).numpy().copy()

    def unpack(self, flat: torch.Tensor) -> dict:
        variables, start = dict(self.variables), 0
        for name in self.free:
            size = self.variables[name].numel()
            variables[name] = flat[start:start + size].reshape(self.variables[name].shape) / self.scales[name]
            start += size
        return variables

    def _graph(self, x: np.ndarray):
        if self.point is None or not np.array_equal(x, self.point):
            flat = torch.from_numpy(x.copy()).requires_grad_()
            loss = self.problem.losses(self.unpack(flat), self.kind).sum()
            (gradient,) = torch.autograd.grad(loss, flat, create_graph=True)
            self.point, self.flat, self.loss, self.gradient = x.copy(), flat, loss, gradient
        return self.loss, self.gradient

    def value_and_gradient(self, x: np.ndarray):
        loss, gradient = self._graph(x)
        return float(loss.detach()), gradient.detach().numpy().copy()

    def hessian_product(self, x: np.ndarray, direction: np.ndarray) -> np.ndarray:
        _, gradient = self._graph(x)
        self.hessian_products += 1
        (product,) = torch.autograd.grad(gradient, self.flat, grad_outputs=torch.from_numpy(direction),
                                         retain_graph=True)
        return product.numpy().copy()


def fit_batch(body_model: BodyModel, targets: np.ndarray, valid: np.ndarray, edges: np.ndarray,
              settings: FitSettings, initial_pose: np.ndarray | None = None) -> dict:
    """Fit SMPL-X to targets (B, V_x, 3) in the three stages. Returns arrays with the fit on axis 0:
    the pose parts (axis-angle), betas, expression, transl, vertices, stage_losses (B, 3) (each
    stage's loss at its end), stage_iterations (B, 3), vertex_error_m (B,) (mean valid-vertex distance)."""
    from scipy.optimize import minimize

    problem = SmplxFitProblem(body_model, targets, valid, edges)
    batch = len(targets)
    variables = {name: torch.zeros(batch, size, dtype=torch.float64) for name, size in VARIABLE_SIZES.items()}
    if initial_pose is not None:
        variables["pose"][:, :3 * SMPL_SHARED_JOINTS] = torch.from_numpy(initial_pose.reshape(batch, -1))
    stage_losses, stage_iterations = np.zeros((batch, len(STAGES))), np.zeros((batch, len(STAGES)), dtype=np.int64)
    scales = {kind: curvature_scales(body_model, valid, edges, kind) for kind in ("edge", "vertex")}
    for index, ((name, kind, free), limit) in enumerate(zip(STAGES, settings.max_iterations)):
        objective = BatchObjective(problem, variables, free, kind, scales[kind])
        start = objective.pack()
        # In the scaled variables the Hessian is about the identity, so the Newton step is about as long
        # as the gradient. scipy's default first trust radius (1.0, doubling per step) would take many
        # iterations to reach it (a 0.3 m translation is a step of ~40 here); start at the gradient norm.
        step = float(np.linalg.norm(objective.value_and_gradient(start)[1]))
        options = {"maxiter": limit, "gtol": settings.gradient_tolerance,
                   "initial_trust_radius": max(1.0, step), "max_trust_radius": max(1000.0, 10.0 * step)}
        with waiting(f"convert: fitting {batch} bod{'y' if batch == 1 else 'ies'}, stage {index + 1}/{len(STAGES)} "
                     f"({name}, {kind} loss)") as spinner:
            def value_and_gradient(x, objective=objective, spinner=spinner):
                value, gradient = objective.value_and_gradient(x)
                spinner.note(f"loss {float(value):.4g}")
                return value, gradient

            result = minimize(value_and_gradient, start, jac=True, hessp=objective.hessian_product,
                              method=settings.method, options=options)
        variables = objective.unpack(torch.from_numpy(result.x))
        with torch.no_grad():
            stage_losses[:, index] = problem.losses(variables, kind).numpy()
        stage_iterations[:, index] = result.nit
        log.debug("stage %s (%s loss): %d iterations, %d Hessian products, loss %.3g, %s", name, kind, result.nit,
                  objective.hessian_products, result.fun, result.message)
    with torch.no_grad():
        vertices = problem.vertices(variables).numpy()
    distances = np.linalg.norm(vertices - targets, axis=2)
    output = split_pose(variables["pose"].numpy())
    output.update(betas=variables["betas"].numpy(), expression=variables["expression"].numpy(),
                  transl=variables["translation"].numpy(), vertices=vertices.astype(np.float32),
                  stage_losses=stage_losses, stage_iterations=stage_iterations,
                  vertex_error_m=(distances * valid).sum(axis=1) / valid.sum())
    return output


def split_pose(pose: np.ndarray) -> dict:
    """(B, 165) axis-angle -> {global_orient (B, 3), body_pose (B, 21, 3), jaw_pose, leye_pose, reye_pose
    (B, 3), left_hand_pose, right_hand_pose (B, 15, 3)}."""
    joints = pose.reshape(len(pose), NUM_POSE_JOINTS, 3)
    parts, start = {}, 0
    for name, count in POSE_PARTS:
        parts[name] = joints[:, start] if count == 1 else joints[:, start:start + count]
        start += count
    return parts


def convert_smpl_to_smplx(meshes: np.ndarray, correspondence: Correspondence, smplx_model,
                          settings: FitSettings | None = None, initial_pose: np.ndarray | None = None,
                          threads: int | None = None) -> dict:
    """SMPL meshes (N, 6890, 3) -> SMPL-X fits, batch by batch with a progress bar.

    initial_pose: optional (N, 22, 3) axis-angle start for SMPL-X joints 0..21 (the SMPL pose, when
    the input was parameters); zeros otherwise. Returns fit_batch's arrays for all N fits.
    """
    settings = settings or FitSettings()
    if threads:
        torch.set_num_threads(threads)
    data = load_body_model(smplx_model)
    if data.kind != "smplx":
        raise BodyModelError(f"{smplx_model}: expected an SMPL-X model file (10475 vertices), got {data.kind.upper()}")
    body_model = BodyModel(data, num_betas=NUM_BETAS, num_expression=NUM_EXPRESSION).double()
    edges = mesh_edges(data.arrays["f"])
    targets = correspondence.to_smplx_topology(np.asarray(meshes, dtype=np.float64))
    starts = range(0, len(targets), settings.batch_size)
    results = []
    for start in progress(starts, label="convert"):
        stop = start + settings.batch_size
        pose = None if initial_pose is None else initial_pose[start:stop]
        results.append(fit_batch(body_model, targets[start:stop], correspondence.valid, edges, settings, pose))
    return {key: np.concatenate([result[key] for result in results]) for key in results[0]}


def convert_file(input_path, correspondence_path, smplx_model, out_path, smpl_model=None,
                 settings: FitSettings | None = None, threads: int | None = None) -> Path:
    """The CLI's conversion: read inputs, fit, write one .npz with every fit's arrays (axis 0 = input order)."""
    meshes, initial_pose = smpl_inputs(input_path, smpl_model)
    correspondence = load_correspondence(correspondence_path)
    results = convert_smpl_to_smplx(meshes, correspondence, smplx_model, settings, initial_pose, threads)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out_path, **results)
    return out_path
