"""`bodyrt convert` reads the SMPL-X authors' deformation-transfer setup file (transfer_model's
smpl2smplx_deftrafo_setup.pkl) as its correspondence, with the same result as bodyrt's own .npz."""

import pickle

import numpy as np
import pytest
import scipy.sparse

from bodyrt.errors import BodyModelError
from bodyrt.export.convert import Correspondence, load_correspondence, write_correspondence

SMPL_VERTICES, SMPLX_VERTICES = 6890, 10475


@pytest.fixture(scope="module")
def barycentric_setup():
    """A correspondence of random triangles and weights; 7 SMPL-X vertices without a counterpart."""
    rng = np.random.default_rng(5)
    corners = rng.integers(0, SMPL_VERTICES, (SMPLX_VERTICES, 3))
    weights = rng.dirichlet(np.ones(3), SMPLX_VERTICES)
    valid = np.ones(SMPLX_VERTICES, bool)
    valid[rng.choice(SMPLX_VERTICES, 7, replace=False)] = False
    return Correspondence(np.zeros(SMPLX_VERTICES, np.int64), corners, weights, valid)


def deftrafo_matrix(correspondence, rng):
    """(V_x, 2 x 6890): positions, then (ignored) normals, as the transfer_model file lays it out."""
    rows = np.repeat(np.arange(SMPLX_VERTICES), 3)
    weights = correspondence.barycentric * correspondence.valid[:, None]  # no counterpart: an empty row
    positions = scipy.sparse.coo_matrix((weights.ravel(), (rows, correspondence.triangle_vertices.ravel())),
                                        shape=(SMPLX_VERTICES, SMPL_VERTICES))
    normals = scipy.sparse.random(SMPLX_VERTICES, SMPL_VERTICES, density=1e-4, random_state=1)
    return scipy.sparse.hstack([positions, normals]).tocsc()


@pytest.mark.parametrize("layout", ["sparse mtx", "dense matrix"])
def test_deftrafo_setup_gives_the_same_smplx_targets_as_the_npz(barycentric_setup, tmp_path, layout):
    rng = np.random.default_rng(6)
    matrix = deftrafo_matrix(barycentric_setup, rng)
    setup = {"mtx": matrix} if layout == "sparse mtx" else {"matrix": matrix[:, :SMPL_VERTICES].toarray()}
    with open(tmp_path / "smpl2smplx_deftrafo_setup.pkl", "wb") as stream:
        pickle.dump(setup, stream, protocol=2)
    write_correspondence(tmp_path / "c.npz", barycentric_setup)
    from_pkl = load_correspondence(tmp_path / "smpl2smplx_deftrafo_setup.pkl")
    from_npz = load_correspondence(tmp_path / "c.npz")
    np.testing.assert_array_equal(from_pkl.valid, barycentric_setup.valid)
    meshes = rng.normal(size=(2, SMPL_VERTICES, 3))
    valid = barycentric_setup.valid
    np.testing.assert_allclose(from_pkl.to_smplx_topology(meshes)[:, valid], from_npz.to_smplx_topology(meshes)[:, valid],
                               atol=1e-12)


def test_a_setup_file_without_the_matrix_or_of_another_shape_is_named(tmp_path):
    with open(tmp_path / "empty.pkl", "wb") as stream:
        pickle.dump({"other": 1}, stream)
    with pytest.raises(BodyModelError, match="empty.pkl: a deformation-transfer setup file holds 'mtx'"):
        load_correspondence(tmp_path / "empty.pkl")
    with open(tmp_path / "small.pkl", "wb") as stream:
        pickle.dump({"mtx": scipy.sparse.eye(10, 20).tocsc()}, stream)
    with pytest.raises(BodyModelError, match=r"small.pkl: deformation-transfer matrix of shape \(10, 20\)"):
        load_correspondence(tmp_path / "small.pkl")


class Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_a_malicious_setup_file_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pkl", "wb") as stream:
        pickle.dump({"mtx": Payload()}, stream)
    with pytest.raises(BodyModelError, match="evil.pkl"):
        load_correspondence(tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned").exists()
