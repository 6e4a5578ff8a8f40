"""The SED model (timm backbone + attention head), its checkpoints, ONNX export and prediction."""
