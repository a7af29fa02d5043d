"""mobilepeft.export: the deployment side, one subpackage per runtime.

* ``ort/``: ONNX Runtime on-device training artifacts, the runtime calls a phone makes, ``personalize``
  (their desktop replay) and ``adapter from-ort``;
* ``executorch/``: the multimodal ``.pte`` and generation through ExecuTorch's ``MultimodalRunner``;
* ``coreml/``: the two ``.mlpackage`` files an iOS app drives;
* shared beside them: ``graphs/`` (vision encoder, static-cache decoder, merged source model),
  ``bundle.py`` (manifest, verification), ``bundle_check.py``, ``bench.py``, ``numerics.py``;
* ``cli.py``: the deployment commands and the CLI's entry point (the composition root).

Data flows one way: this package imports the rest of ``mobilepeft``; nothing outside it (except the
``python -m mobilepeft`` entry point) imports it (tests/test_layering.py).
"""
