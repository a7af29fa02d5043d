"""Read a saved ``.mlpackage`` back on any OS: its declared interface and its MIL program's weights.

Core ML predicts only on Apple hardware, but a package is a protobuf plus a weight file that
coremltools parses everywhere. This is what the exporter's own check and the tests rely on to
show that a package declares the manifest's inputs/outputs/states, holds the model's weights, and
stores them in the compressed format asked for.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The operand of each weight-carrying op that holds the weight.
WEIGHT_OPERANDS = {"linear": "weight", "conv": "weight", "gather": "x", "matmul": "y"}
_DTYPES = {"FLOAT16": "float16", "FLOAT32": "float32", "INT32": "int32", "DOUBLE": "float64"}


def load_package(path: str | Path):
    """The package as a coremltools ``MLModel`` without compiling it (compiling needs macOS)."""
    from mobilepeft.export.quiet import quiet_coremltools

    with quiet_coremltools():
        import coremltools as ct

        return ct.models.MLModel(str(path), skip_model_load=True)


def package_io(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Inputs, outputs and states as ``{"name", "dtype", "shape"}``; a flexible dimension is ``"T"``,
    a shape the package leaves open (outputs of flexible inputs) is ``None``."""
    description = load_package(path).get_spec().description  # first: imports coremltools quietly
    from coremltools.proto import FeatureTypes_pb2

    names = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType

    def array(feature, array_type) -> dict[str, Any]:
        shape: list | None = list(array_type.shape) or None
        ranges = array_type.shapeRange.sizeRanges
        if ranges:
            shape = ["T" if r.lowerBound != r.upperBound else int(r.lowerBound) for r in ranges]
        return {"name": feature.name, "dtype": _DTYPES[names.Name(array_type.dataType)], "shape": shape}

    return {
        "inputs": [array(f, f.type.multiArrayType) for f in description.input],
        "outputs": [array(f, f.type.multiArrayType) for f in description.output],
        "states": [array(f, f.type.stateType.arrayType) for f in description.state],
    }


def package_bytes(path: str | Path) -> int:
    """Size on disk: an ``.mlpackage`` is a directory (manifest, model spec, weight file)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def specification_version(path: str | Path) -> int:
    return load_package(path).get_spec().specificationVersion


def mil_program(path: str | Path):
    """The package's MIL program with its weights read from ``weights/weight.bin``."""
    package = load_package(path)  # first: imports coremltools quietly
    from coremltools.converters.mil.frontend.milproto.load import load

    spec = package.get_spec()
    return load(spec, spec.specificationVersion, file_weights_dir=package.weights_dir)


def op_counts(path: str | Path) -> Counter:
    """How many ops of each type the main function runs."""
    return Counter(op.op_type for op in mil_program(path).functions["main"].operations)


@dataclass
class StoredWeight:
    name: str  # the PyTorch parameter it came from, dots as underscores (e.g. decoder_lm_head_weight)
    consumer: str  # the op that uses it: linear, conv, gather, matmul
    storage: str  # "const" (plain fp16) or the constexpr op that decompresses it at load time
    stored_dtype: str  # dtype of the stored data: float16, int8, int4, uint4 (palette indices) ...
    value: np.ndarray  # the weight as Core ML computes with it (decompressed), float32


def stored_weights(path: str | Path) -> list[StoredWeight]:
    """Every weight operand of a linear/conv/gather/matmul op, decompressed, with how it is stored."""
    weights = []
    for op in mil_program(path).functions["main"].operations:
        operand = WEIGHT_OPERANDS.get(op.op_type)
        var = op.inputs.get(operand) if operand else None
        if var is None or var.op is None:
            continue
        producer = var.op
        if producer.op_type == "const":
            value, stored = var.val, var
        elif producer.op_type.startswith("constexpr_"):
            value, stored = producer.materialized_val_inference(), _stored_data(producer)
        else:
            continue  # an activation (attention's matmuls), not a weight
        if value is None or not isinstance(value, np.ndarray) or value.ndim < 2:
            continue
        weights.append(StoredWeight(_torch_name(var.name), op.op_type, producer.op_type,
                                    _dtype_name(stored), np.asarray(value, dtype=np.float32)))
    return weights


def _stored_data(producer):
    """The compressed operand of a constexpr op: quantized data or palette indices."""
    for operand in ("data", "quantized_data", "indices"):
        var = producer.inputs.get(operand)
        if var is not None:
            return var
    raise ValueError(f"unknown compressed weight format {producer.op_type}")


def _dtype_name(var) -> str:
    """MIL's own name for the stored element type (numpy has no int4/uint4: it holds them in int8/uint8)."""
    from coremltools.converters.mil.mil import types

    return {"fp16": "float16", "fp32": "float32"}.get(types.builtin_to_string(var.dtype),
                                                        types.builtin_to_string(var.dtype))


def _torch_name(const_name: str) -> str:
    """``p_decoder_lm_head_weight_to_fp16_quantized`` -> ``decoder_lm_head_weight``."""
    name = re.sub(r"^p_", "", const_name)
    return re.sub(r"(_to_fp16|_quantized|_palettized|_promoted)+$", "", name)
