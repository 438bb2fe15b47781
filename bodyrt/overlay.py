"""Draw predicted meshes over the input image so a person can judge the fit at a glance.

Vertices are projected exactly as the network's attention sees them: the weak-perspective camera
into body-crop pixels, then back to the full image through the body crop transform. Triangles are
drawn far to near (painter's algorithm), back faces culled, Lambert-shaded with a light at the camera.
"""

import numpy as np

MESH_COLOUR = np.array([150, 190, 240], dtype=np.float64)


def project_to_image(vertices, camera_scale, camera_translation, crop_transform, crop_size: int):
    """(V, 3) model-space metres -> (V, 2) full-image pixels through the weak-perspective camera."""
    crop_pixels = (camera_scale * (vertices[:, :2] + camera_translation) * 0.5 + 0.5) * crop_size
    k = crop_transform[0, 0]
    return (crop_pixels - crop_transform[:2, 2]) / k


def render_overlay(image: np.ndarray, outputs: dict, faces: np.ndarray, crop_size: int,
                   opacity: float = 0.75) -> np.ndarray:
    """image (H, W, 3) uint8 + batched outputs (vertices, camera_*, crop_transforms) -> overlay uint8.

    crop_size: side of the body crop the camera refers to (256 ExPose, 224 HKMR, deform-and-learn)."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="RGB")
    layer = canvas.copy()
    draw = ImageDraw.Draw(layer)
    mask = Image.new("L", canvas.size, 0)
    mask_draw = ImageDraw.Draw(mask)
    triangles = []
    for person in range(len(outputs["vertices"])):
        vertices = np.asarray(outputs["vertices"][person], dtype=np.float64)
        points = project_to_image(vertices, float(outputs["camera_scale"][person]),
                                  np.asarray(outputs["camera_translation"][person], dtype=np.float64),
                                  np.asarray(outputs["crop_transforms"][person], dtype=np.float64),
                                  crop_size)
        corners = vertices[faces]  # (F, 3, 3)
        normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
        facing = -normals[:, 2]  # the camera looks along +z
        depth = corners[:, :, 2].mean(axis=1)
        for index in np.flatnonzero(facing > 0):
            triangles.append((depth[index], facing[index], points[faces[index]]))
    triangles.sort(key=lambda triangle: -triangle[0])
    for _, facing, corners_px in triangles:
        shade = tuple(int(c) for c in MESH_COLOUR * (0.25 + 0.75 * facing))
        polygon = [tuple(p) for p in corners_px.tolist()]
        draw.polygon(polygon, fill=shade)
        mask_draw.polygon(polygon, fill=int(255 * opacity))
    return np.asarray(Image.composite(layer, canvas, mask))
