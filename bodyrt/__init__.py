"""bodyrt: export ExPose-style whole-body mesh regressors and run them with low latency.

Subpackages:
    bodyrt.export   PyTorch stages, checkpoint and body-model loading, ONNX/TensorRT export
    bodyrt.runtime  the torch-free runtime (ONNX Runtime on the CPU by default)
    bodyrt.kernels  the CUDA crop kernel, its host build and loading
"""

__version__ = "0.1.0"
