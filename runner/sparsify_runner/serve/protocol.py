"""The Open Inference Protocol (KServe v2 REST) on the wire: pydantic models, datatype <->
numpy mapping, and the request/response codecs with one-line errors.

Tensors travel as JSON (``data``: row-major, flat or nested) or, with Triton's binary tensor
extension (what ``tritonclient`` sends by default), as raw little-endian bytes after the
JSON header (``Inference-Header-Content-Length``; ``parameters.binary_data_size`` per
tensor). Every problem with a request is a ``ProtocolError`` carrying the HTTP status and
the message for the protocol's ``{"error": "..."}`` body.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

HEADER_LENGTH = "Inference-Header-Content-Length"

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class ProtocolError(Exception):
    """A request the server refuses: ``status`` (400, 404, 413, ...) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(" ".join(message.split()))
        self.status = status


# ---- wire models --------------------------------------------------------------------------
class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a dimension of any size")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(default_factory=lambda: ["1"])
    platform: str = "onnxruntime_onnx"
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str = "sparsify-serve"
    version: str
    extensions: list[str] = Field(default_factory=lambda: ["binary_tensor_data"])


class RequestInput(BaseModel):
    name: str
    shape: list[int] = Field(description="non-negative dimensions")
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


# ---- requests -----------------------------------------------------------------------------
def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The JSON part of an infer request (validated) and the binary tail (may be empty)."""
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(
                400, f"header {HEADER_LENGTH} must be an integer, got '{header_length}'"
            ) from None
        if not 0 < n <= len(body):
            raise ProtocolError(400, f"header {HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
        body, binary = body[:n], body[n:]
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        msg = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
        raise ProtocolError(
            400, f"request body is not valid JSON ({msg}); send an inference request object"
        ) from None
    if not isinstance(raw, dict):
        raise ProtocolError(400, "request body must be a JSON object with an 'inputs' list")
    try:
        return InferenceRequest.model_validate(raw), binary
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "request"
        raise ProtocolError(400, f"invalid inference request: {loc}: {first['msg']}") from None


def _shape_text(shape: list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _check_shape(item: RequestInput, spec: TensorMetadata) -> None:
    if any(not isinstance(d, int) or d < 0 for d in item.shape):
        raise ProtocolError(400, f"input '{item.name}': shape {item.shape} must hold non-negative integers")
    fits = len(item.shape) == len(spec.shape) and all(
        want < 0 or want == got for want, got in zip(spec.shape, item.shape, strict=True)
    )
    if not fits:
        raise ProtocolError(
            400,
            f"input '{item.name}' has shape {_shape_text(item.shape)} but the model expects "
            f"{_shape_text(spec.shape)} (-1 = any size)",
        )


def _from_binary(item: RequestInput, chunk: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    if item.datatype == "BYTES":
        values, offset = [], 0
        while offset < len(chunk):
            if offset + 4 > len(chunk):
                raise ProtocolError(400, f"input '{item.name}': truncated BYTES element in its binary data")
            (size,) = struct.unpack_from("<I", chunk, offset)
            values.append(chunk[offset + 4 : offset + 4 + size].decode("utf-8", errors="replace"))
            offset += 4 + size
        if len(values) != count:
            raise ProtocolError(
                400,
                f"input '{item.name}' has {len(values)} BYTES elements but shape {item.shape} needs {count}",
            )
        return np.array(values, dtype=object)
    if len(chunk) != count * dtype.itemsize:
        raise ProtocolError(
            400,
            f"input '{item.name}' has {len(chunk)} bytes of binary data but shape {item.shape} of "
            f"{item.datatype} needs {count * dtype.itemsize}",
        )
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)


def _from_json(item: RequestInput, dtype: np.dtype, count: int) -> np.ndarray:
    if item.data is None:
        raise ProtocolError(400, f"input '{item.name}' has no 'data' (and no binary_data_size parameter)")
    data = item.data if isinstance(item.data, list) else [item.data]
    try:
        arr = np.asarray(data)
    except ValueError:
        raise ProtocolError(400, f"input '{item.name}': 'data' is a ragged nested list") from None
    if arr.size != count:
        raise ProtocolError(
            400, f"input '{item.name}' has {arr.size} data elements but shape {item.shape} needs {count}"
        )
    arr = arr.reshape(-1)
    kind, want = arr.dtype.kind, item.datatype
    if count == 0:
        return np.zeros(0, dtype=dtype)
    if kind == "O" and all(isinstance(v, int) and not isinstance(v, bool) for v in arr):
        # integers beyond 64 bits: numpy keeps them as Python objects
        if dtype.kind in "iu":
            raise ProtocolError(400, f"input '{item.name}': a value is out of range for {want}")
        arr, kind = arr.astype(np.float64), "f"
    if want == "BYTES":
        if kind != "U":
            raise ProtocolError(400, f"input '{item.name}' is BYTES: its data must be strings")
        return arr.astype(object)
    if want == "BOOL":
        if kind != "b":
            raise ProtocolError(400, f"input '{item.name}' is BOOL: its data must be true/false")
        return arr
    if dtype.kind in "iu":
        if kind not in "iu":
            raise ProtocolError(400, f"input '{item.name}' is {want}: its data must be integers")
        info = np.iinfo(dtype)
        if int(arr.min()) < info.min or int(arr.max()) > info.max:
            raise ProtocolError(400, f"input '{item.name}': a value is out of range for {want}")
        return arr.astype(dtype)
    if kind not in "iuf":
        raise ProtocolError(400, f"input '{item.name}' is {want}: its data must be numbers")
    return arr.astype(dtype)


def decode_inputs(
    request: InferenceRequest, binary: bytes, specs: list[TensorMetadata], model_name: str
) -> dict[str, np.ndarray]:
    """Request tensors -> numpy arrays shaped and typed as the model wants; ProtocolError(400)
    for unknown/missing/duplicate inputs, wrong datatype, shape or data length."""
    by_name = {s.name: s for s in specs}
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for item in request.inputs:
        spec = by_name.get(item.name)
        if spec is None:
            raise ProtocolError(
                400, f"unknown input '{item.name}'; model '{model_name}' has inputs {sorted(by_name)}"
            )
        if item.name in arrays:
            raise ProtocolError(400, f"input '{item.name}' is given twice")
        if item.datatype not in DATATYPES:
            raise ProtocolError(
                400,
                f"input '{item.name}': unknown datatype '{item.datatype}'; use one of {', '.join(DATATYPES)}",
            )
        if item.datatype != spec.datatype:
            raise ProtocolError(
                400,
                f"input '{item.name}' has datatype {item.datatype} but model '{model_name}' "
                f"expects {spec.datatype}",
            )
        _check_shape(item, spec)
        dtype = DATATYPES[item.datatype]
        count = int(np.prod(item.shape, dtype=np.int64))
        size = item.parameters.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ProtocolError(
                    400, f"input '{item.name}': binary_data_size must be a non-negative integer"
                )
            if offset + size > len(binary):
                raise ProtocolError(
                    400, f"input '{item.name}': binary_data_size {size} runs past the end of the body"
                )
            flat = _from_binary(item, binary[offset : offset + size], dtype, count)
            offset += size
        else:
            flat = _from_json(item, dtype, count)
        arrays[item.name] = flat.reshape(item.shape)
    if offset != len(binary):
        raise ProtocolError(400, f"the body has {len(binary) - offset} bytes of binary data no input claims")
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise ProtocolError(400, f"missing input '{missing[0]}' of model '{model_name}'")
    return arrays


def requested_outputs(request: InferenceRequest, specs: list[TensorMetadata]) -> list[tuple[str, bool]]:
    """(name, as binary?) for every output to return; unknown names are a 400."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    names = [s.name for s in specs]
    if request.outputs is None:
        return [(n, default_binary) for n in names]
    chosen = []
    for out in request.outputs:
        if out.name not in names:
            raise ProtocolError(400, f"unknown output '{out.name}'; the model has outputs {names}")
        chosen.append((out.name, bool(out.parameters.get("binary_data", default_binary))))
    return chosen


# ---- responses ----------------------------------------------------------------------------
def datatype_of(arr: np.ndarray) -> str:
    if arr.dtype.kind in "OUS":
        return "BYTES"
    for name, dtype in DATATYPES.items():
        if dtype == arr.dtype:
            return name
    raise ProtocolError(500, f"the model returned a tensor of unsupported type {arr.dtype}")


def _bytes_elements(arr: np.ndarray) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in arr.reshape(-1)]


def encode_response(
    model_name: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    selected: list[tuple[str, bool]],
) -> tuple[bytes, dict[str, str]]:
    """(body, extra headers): JSON alone, or the JSON header + binary tensors."""
    entries: list[ResponseOutput] = []
    chunks: list[bytes] = []
    for name, binary in selected:
        arr = np.ascontiguousarray(outputs[name])
        dtype = datatype_of(arr)
        entry = ResponseOutput(name=name, shape=list(arr.shape), datatype=dtype)
        if binary:
            if dtype == "BYTES":
                raw = b"".join(struct.pack("<I", len(v)) + v for v in _bytes_elements(arr))
            else:
                raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            entry.parameters = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif dtype == "BYTES":
            entry.data = [v.decode("utf-8", errors="replace") for v in _bytes_elements(arr)]
        else:
            entry.data = arr.reshape(-1).tolist()
        entries.append(entry)
    response = InferenceResponse(model_name=model_name, model_version="1", id=request_id, outputs=entries)
    header = response.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }
