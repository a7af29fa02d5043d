"""ExecuTorch: the multimodal ``.pte`` program and generation through ExecuTorch's own runner."""
