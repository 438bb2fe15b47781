"""Writers for per-person results: params.npz, PLY and OBJ meshes. numpy only."""

from pathlib import Path

import numpy as np

# Keys of params.npz, shared by the reference pipeline and the runtime.
PARAM_KEYS = ("vertices", "joints", "global_orient", "body_pose", "left_hand_pose", "right_hand_pose",
              "jaw_pose", "betas", "expression", "camera_scale", "camera_translation")


def write_params(path, person: dict, required=PARAM_KEYS) -> Path:
    """Save one person's results (every `required` entry, plus any extra arrays given) as .npz.

    required: the names that must be there; the ExPose set by default, a bundle's manifest `results`
    for other architectures (SMPL ones have no hand, jaw or expression entries)."""
    missing = [key for key in required if key not in person]
    if missing:
        raise KeyError(f"person result lacks {missing}")
    path = Path(path)
    np.savez(path, **{key: np.asarray(value) for key, value in person.items()})
    return path


def write_ply(path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Binary little-endian PLY: vertices (V, 3) float32 metres, faces (F, 3) int."""
    vertices = np.ascontiguousarray(vertices, dtype="<f4")
    faces = np.asarray(faces)
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode("ascii")
    face_records = np.empty(len(faces), dtype=[("count", "u1"), ("indices", "<i4", (3,))])
    face_records["count"] = 3
    face_records["indices"] = faces
    path = Path(path)
    with open(path, "wb") as stream:
        stream.write(header)
        stream.write(vertices.tobytes())
        stream.write(face_records.tobytes())
    return path


def write_obj(path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Wavefront OBJ with 1-based face indices."""
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in np.asarray(vertices, dtype=np.float64)]
    lines += [f"f {a} {b} {c}" for a, b, c in np.asarray(faces, dtype=np.int64) + 1]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_ply(path):
    """Read a PLY written by write_ply -> (vertices (V, 3) float32, faces (F, 3) int32)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    counts = {line.split()[1]: int(line.split()[2]) for line in header if line.startswith("element")}
    vertices = np.frombuffer(data, dtype="<f4", count=counts["vertex"] * 3, offset=end).reshape(-1, 3)
    face_records = np.frombuffer(data, dtype=[("count", "u1"), ("indices", "<i4", (3,))],
                                 count=counts["face"], offset=end + vertices.nbytes)
    return vertices, face_records["indices"]
