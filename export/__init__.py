"""bodyrt.export: PyTorch stages, checkpoint and body-model loading, ONNX and TensorRT export."""
