"""ONNX Runtime on-device training: the artifacts, the runtime calls a phone makes, and their desktop replay."""
