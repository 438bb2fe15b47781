"""bodyrt.runtime: the lean runtime. It never imports torch.

    pipeline = bodyrt.runtime.open_bundle("bundle/", threads=2)
    result = pipeline(image_rgb_uint8, [[x0, y0, x1, y1]])
    result.outputs["vertices"]  # (N, 10475, 3) float32, metres
"""

from bodyrt.runtime.pipeline import Pipeline, Result, open_bundle

__all__ = ["Pipeline", "Result", "open_bundle"]
