"""mobilepeft.export: the deployment side (merge, ONNX training artifacts, ExecuTorch, Core ML).

Data flows one way: this package imports ``mobilepeft``; ``mobilepeft`` never imports it.
"""
