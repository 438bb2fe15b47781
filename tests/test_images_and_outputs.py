import numpy as np
import pytest
from PIL import Image

from bodyrt.errors import InputError
from bodyrt.images import load_image
from bodyrt.runtime.outputs import read_ply, write_obj, write_params, write_ply, PARAM_KEYS


def test_rgb_png_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgb)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    gray = np.arange(12 * 9, dtype=np.uint8).reshape(12, 9)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    loaded = load_image(tmp_path / "g.png")
    assert loaded.shape == (12, 9, 3)
    np.testing.assert_array_equal(loaded[:, :, 1], gray)
    rgba = np.zeros((5, 6, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png")[0, 0].tolist() == [200, 0, 0]


def test_sixteen_bit_is_scaled_to_eight(tmp_path):
    values = np.array([[0, 65535], [257 * 128, 257]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert load_image(tmp_path / "d.png")[:, :, 0].tolist() == [[0, 255], [128, 1]]


def test_jpeg_decodes(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(tmp_path / "a.jpg", quality=95)
    assert abs(int(load_image(tmp_path / "a.jpg")[4, 4, 0]) - 120) <= 2


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_unreadable_files_raise_input_error_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match="broken.png"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such image"):
        load_image(tmp_path / "nothing.jpg")


def test_other_formats_are_rejected(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.bmp")
    with pytest.raises(InputError, match="unsupported image format BMP"):
        load_image(tmp_path / "a.bmp")


def test_ply_and_obj_writers(tmp_path):
    rng = np.random.default_rng(1)
    vertices = rng.normal(size=(7, 3)).astype(np.float32)
    faces = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6]])
    write_ply(tmp_path / "m.ply", vertices, faces)
    read_vertices, read_faces = read_ply(tmp_path / "m.ply")
    np.testing.assert_array_equal(read_vertices, vertices)
    np.testing.assert_array_equal(read_faces, faces)
    lines = write_obj(tmp_path / "m.obj", vertices, faces).read_text().splitlines()
    assert lines[7] == "f 1 2 3" and len(lines) == 10
    assert np.allclose([float(v) for v in lines[0].split()[1:]], vertices[0], atol=1e-6)


def test_params_need_every_key(tmp_path):
    person = {key: np.zeros(2) for key in PARAM_KEYS}
    saved = np.load(write_params(tmp_path / "p.npz", person))
    assert set(saved.files) == set(PARAM_KEYS)
    del person["betas"]
    with pytest.raises(KeyError, match="betas"):
        write_params(tmp_path / "q.npz", person)
