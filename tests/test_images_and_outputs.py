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


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored landscape and tagged "rotate 90 clockwise" (orientation 6) loads as displayed."""
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = (250, 0, 0)  # left half red, right half blue, as stored
    stored[:, 30:] = (0, 0, 250)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    loaded = load_image(tmp_path / "phone.jpg")
    assert loaded.shape == (60, 40, 3)
    # rotated 90 degrees clockwise: the stored left half is now the top
    assert loaded[5, 20, 0] > 200 and loaded[5, 20, 2] < 50
    assert loaded[55, 20, 2] > 200 and loaded[55, 20, 0] < 50


def test_png_with_a_bad_checksum_is_refused(tmp_path):
    """Corrupted image data whose zlib stream still inflates would decode into wrong pixels."""
    import zlib

    rgb = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    data = bytearray((tmp_path / "a.png").read_bytes())
    start = data.find(b"IDAT")
    length = int.from_bytes(data[start - 4:start], "big")
    pixels = bytearray(zlib.decompress(bytes(data[start + 4:start + 4 + length])))
    pixels[200:260] = bytes(60)  # wrong pixels, recompressed: a valid stream under a stale CRC
    recompressed = zlib.compress(bytes(pixels))
    data[start - 4:start + 4 + length] = len(recompressed).to_bytes(4, "big") + b"IDAT" + recompressed
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(InputError, match="bad.png: not a readable image"):
        load_image(tmp_path / "bad.png")


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path):
    Image.new("L", (12000, 10000)).save(tmp_path / "huge.png")  # 120 Mpx, compresses to ~100 kB
    with pytest.raises(InputError, match="huge.png: image of 12000x10000 pixels is too large"):
        load_image(tmp_path / "huge.png")


def test_a_pipe_is_not_read(tmp_path):
    import os

    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(InputError, match="fifo.png: not a regular file"):
        load_image(tmp_path / "fifo.png")


def test_images_past_pillows_own_bomb_limit_get_the_same_message(tmp_path):
    Image.new("1", (20000, 10000)).save(tmp_path / "bomb.png")  # 200 Mpx: Pillow itself raises
    with pytest.raises(InputError, match="bomb.png: image is too large"):
        load_image(tmp_path / "bomb.png")


@pytest.mark.parametrize("box", [["-1e3", "0", "700", "700"], ["-.5e1", "-2", "7e2", "700"], ["-10", "0", "700", "700"]])
def test_box_numbers_in_any_float_notation_reach_the_box_check(box):
    """argparse alone reads "-1e3" as an option and says --box expected 4 arguments."""
    from bodyrt.cli import build_parser, protect_box_numbers

    args = build_parser().parse_args(protect_box_numbers(["run", "--bundle", "b", "x.png", "--out", "r", "--box", *box]))
    assert args.box == [[float(value) for value in box]]
    assert args.images == ["x.png"]
