"""The Python API in one file: open a bundle, run an image with person boxes, read the results, write meshes.

    python examples/python/run_image.py BUNDLE photo.jpg --box 100 50 600 950 --out meshes/
    python examples/python/run_image.py ~/.cache/bodyrt/demo-seed0/bundle bodyrt-demo/sample.png --out meshes/

Needs only the runtime (numpy, pillow and ONNX Runtime: pip install ".[cpu]"). For each person it
prints the shapes of vertices, joints and parameters and writes `person<N>.obj` (the mesh placed in the
scene, y up, as `bodyrt run` writes it) and `person<N>_params.npz` (smplx-ready keys, see the README).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from bodyrt.errors import BodyrtError
from bodyrt.geometry import full_image_camera, smplx_parameters, to_coords
from bodyrt.images import load_image
from bodyrt.runtime import open_bundle
from bodyrt.runtime.outputs import write_obj


def run_image(bundle, image_path, boxes, out_dir, backend="onnxruntime", threads=2) -> list[dict]:
    """Run one image; write each person's OBJ and params; return per person {"obj", "params", "transl"}."""
    pipeline = open_bundle(bundle, backend=backend, threads=threads)  # verifies every file of the bundle
    image = load_image(image_path)  # (H, W, 3) uint8 RGB, EXIF orientation applied
    height, width = image.shape[:2]
    if not boxes:  # no box given: the whole image is one person
        boxes = [[0, 0, width, height]]
    result = pipeline(image, np.asarray(boxes, dtype=np.float32))
    outputs = result.outputs  # name -> array, person first: vertices (N, V, 3) metres, joints (N, J, 3), ...
    count = len(outputs["vertices"])
    print(f"{image_path}: {count} {'person' if count == 1 else 'people'} in {sum(result.timings_ms.values()):.0f} ms "
          f"({result.info['backend']}, {result.info['precision']})")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    crop_size = pipeline.manifest.body_crop.crop_size
    written = []
    for person in range(len(outputs["vertices"])):
        values = {name: array[person] for name, array in outputs.items()}
        # the weak-perspective camera of the body crop -> the full-image camera that places the person
        camera = full_image_camera(values["camera_scale"], values["camera_translation"], values["crop_transforms"],
                                   float(np.ravel(values["focal_length"])[0]), (height, width), crop_size)
        params = smplx_parameters({**values, "transl": camera["transl"]})  # axis-angle, smplx's keys
        placed = values["vertices"] + camera["transl"]  # camera frame: x right, y down, z forward
        print(f"  person {person}: vertices {values['vertices'].shape}, joints {values['joints'].shape}, "
              f"body_pose {params['body_pose'].shape}, betas {params['betas'].shape}, "
              f"transl {np.round(camera['transl'], 3).tolist()} m")
        obj = write_obj(out_dir / f"person{person}.obj", to_coords(placed, "yup"), pipeline.faces)
        npz = out_dir / f"person{person}_params.npz"
        np.savez(npz, vertices=values["vertices"], joints=values["joints"],
                 camera_intrinsics=camera["camera_intrinsics"], **params)
        written.append({"obj": obj, "params": npz, "transl": camera["transl"]})
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="run one image through a bodyrt bundle with the Python API")
    parser.add_argument("bundle", help="bundle folder (bodyrt export, or the demo's)")
    parser.add_argument("image", help="JPEG or PNG file")
    parser.add_argument("--box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                        help="person box in pixels; repeat for several (default: the whole image)")
    parser.add_argument("--out", default="meshes", help="output folder (default: %(default)s)")
    parser.add_argument("--backend", default="onnxruntime", help="onnxruntime or openvino (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        run_image(args.bundle, args.image, args.box, args.out, backend=args.backend)
    except BodyrtError as error:  # a bad bundle, image or box: one line, no traceback
        print(f"run_image: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
