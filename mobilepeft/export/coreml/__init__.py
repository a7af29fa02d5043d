"""Core ML: the ``.mlpackage`` pair an iOS app drives, and reading a saved package back on any OS."""
