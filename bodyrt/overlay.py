"""Draw predicted meshes over the input image so a person can judge the fit at a glance.

Vertices are projected exactly as the network's attention sees them: the weak-perspective camera
into body-crop pixels, then back to the full image through the body crop transform. Triangles are
drawn far to near (painter's algorithm), back faces culled, Lambert-shaded with a light at the camera.
Over the meshes: each person's box (white), the hand boxes (right orange, left green) and the face box
(magenta) the attention chose, and the 2D joints (red dots).
"""

import numpy as np

MESH_COLOUR = np.array([150, 190, 240], dtype=np.float64)
PERSON_BOX_COLOUR = (255, 255, 255)
PART_BOX_COLOURS = ((255, 150, 0), (60, 220, 60), (230, 60, 230))  # right hand, left hand, face
JOINT_COLOUR = (230, 30, 30)


def project_to_image(vertices, camera_scale, camera_translation, crop_transform, crop_size: int):
    """(V, 3) model-space metres -> (V, 2) full-image pixels through the weak-perspective camera."""
    crop_pixels = (camera_scale * (vertices[:, :2] + camera_translation) * 0.5 + 0.5) * crop_size
    k = crop_transform[0, 0]
    return (crop_pixels - crop_transform[:2, 2]) / k


def render_overlay(image: np.ndarray, outputs: dict, faces: np.ndarray, crop_size: int,
                   opacity: float = 0.75, person_boxes=None, joints_2d=None) -> np.ndarray:
    """image (H, W, 3) uint8 + batched outputs (vertices, camera_*, crop_transforms) -> overlay uint8.

    crop_size: side of the body crop the camera refers to (256 ExPose, 224 HKMR, deform-and-learn).
    person_boxes (N, 4) x0, y0, x1, y1 and joints_2d (N, J, 2) full-image pixels are drawn over the
    meshes when given, and so are outputs["part_boxes"] (N, 3, 3) cx, cy, size when present."""
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
    shaded = Image.composite(layer, canvas, mask)
    draw_annotations(shaded, outputs.get("part_boxes"), person_boxes, joints_2d)
    return np.asarray(shaded)


def draw_annotations(picture, part_boxes=None, person_boxes=None, joints_2d=None) -> None:
    """Draw person boxes, part boxes (cx, cy, size) and 2D joints on a PIL image, in place."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 400))
    for box in [] if person_boxes is None else np.asarray(person_boxes, dtype=np.float64).reshape(-1, 4):
        draw.rectangle([float(value) for value in box], outline=PERSON_BOX_COLOUR, width=width)
    for person in [] if part_boxes is None else np.asarray(part_boxes, dtype=np.float64):
        for (cx, cy, size), colour in zip(person, PART_BOX_COLOURS):
            if not np.all(np.isfinite([cx, cy, size])):
                continue
            half = size / 2
            draw.rectangle([cx - half, cy - half, cx + half, cy + half], outline=colour, width=width)
    radius = width + 1
    for points in [] if joints_2d is None else joints_2d:
        for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2):
            if np.isfinite(x) and np.isfinite(y):
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=JOINT_COLOUR)
