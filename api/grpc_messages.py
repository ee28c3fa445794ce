"""The Open Inference Protocol's gRPC messages (KServe's grpc_predict_v2.proto, package
`inference`, service `GRPCInferenceService`), built here at import without generated code.

Generated `_pb2` modules are tied to the protoc that wrote them (protobuf checks the version of
the code it loads), and generating them at build time needs grpcio-tools. The messages are few
and fixed, so this module describes them as a FileDescriptorProto, field numbers and types as
the proto has them, in a private descriptor pool (so a process that also imports
tritonclient's own `inference.*` messages has no clash), and makes the message classes from
it. `tritonclient.grpc` and KServe's clients speak to them unchanged: the wire format is the
field numbers and types.

Only the protocol's own RPCs are here (server and model health, metadata, ModelInfer). Triton's
additions to the service (streaming, repository, statistics, shared memory...) have no
handler, so the server answers them UNIMPLEMENTED.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

_Field = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "bool": _Field.TYPE_BOOL, "string": _Field.TYPE_STRING, "bytes": _Field.TYPE_BYTES,
    "int32": _Field.TYPE_INT32, "int64": _Field.TYPE_INT64, "uint32": _Field.TYPE_UINT32,
    "uint64": _Field.TYPE_UINT64, "float": _Field.TYPE_FLOAT, "double": _Field.TYPE_DOUBLE,
}
_PARAMETERS = "map<InferParameter>"

#: message -> its fields: (name, number, type), "repeated TYPE", a message name, or a map of
#: string to InferParameter; nested messages as "Outer.Inner"
MESSAGES: dict[str, list[tuple[str, int, str]]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, "bool")],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, "bool")],
    "ModelReadyRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelReadyResponse": [("ready", 1, "bool")],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [("name", 1, "string"), ("version", 2, "string"),
                               ("extensions", 3, "repeated string")],
    "ModelMetadataRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelMetadataResponse": [
        ("name", 1, "string"), ("versions", 2, "repeated string"), ("platform", 3, "string"),
        ("inputs", 4, "repeated ModelMetadataResponse.TensorMetadata"),
        ("outputs", 5, "repeated ModelMetadataResponse.TensorMetadata")],
    "ModelMetadataResponse.TensorMetadata": [
        ("name", 1, "string"), ("datatype", 2, "string"), ("shape", 3, "repeated int64")],
    "InferParameter": [  # one of them (the oneof parameter_choice)
        ("bool_param", 1, "bool"), ("int64_param", 2, "int64"), ("string_param", 3, "string"),
        ("double_param", 4, "double"), ("uint64_param", 5, "uint64")],
    "InferTensorContents": [
        ("bool_contents", 1, "repeated bool"), ("int_contents", 2, "repeated int32"),
        ("int64_contents", 3, "repeated int64"), ("uint_contents", 4, "repeated uint32"),
        ("uint64_contents", 5, "repeated uint64"), ("fp32_contents", 6, "repeated float"),
        ("fp64_contents", 7, "repeated double"), ("bytes_contents", 8, "repeated bytes")],
    "ModelInferRequest": [
        ("model_name", 1, "string"), ("model_version", 2, "string"), ("id", 3, "string"),
        ("parameters", 4, _PARAMETERS),
        ("inputs", 5, "repeated ModelInferRequest.InferInputTensor"),
        ("outputs", 6, "repeated ModelInferRequest.InferRequestedOutputTensor"),
        ("raw_input_contents", 7, "repeated bytes")],
    "ModelInferRequest.InferInputTensor": [
        ("name", 1, "string"), ("datatype", 2, "string"), ("shape", 3, "repeated int64"),
        ("parameters", 4, _PARAMETERS), ("contents", 5, "InferTensorContents")],
    "ModelInferRequest.InferRequestedOutputTensor": [
        ("name", 1, "string"), ("parameters", 2, _PARAMETERS)],
    "ModelInferResponse": [
        ("model_name", 1, "string"), ("model_version", 2, "string"), ("id", 3, "string"),
        ("parameters", 4, _PARAMETERS),
        ("outputs", 5, "repeated ModelInferResponse.InferOutputTensor"),
        ("raw_output_contents", 6, "repeated bytes")],
    "ModelInferResponse.InferOutputTensor": [
        ("name", 1, "string"), ("datatype", 2, "string"), ("shape", 3, "repeated int64"),
        ("parameters", 4, _PARAMETERS), ("contents", 5, "InferTensorContents")],
}

#: RPC -> (request message, response message)
RPCS = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The proto file of MESSAGES, with a map entry message for every parameters map."""
    file = descriptor_pb2.FileDescriptorProto(name="zerobatch/grpc_predict_v2.proto",
                                              package=PACKAGE, syntax="proto3")
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full_name, fields in MESSAGES.items():  # outer messages come before their nested ones
        outer, _, inner = full_name.rpartition(".")
        proto = (protos[outer].nested_type.add(name=inner) if outer
                 else file.message_type.add(name=full_name))
        protos[full_name] = proto
        for name, number, kind in fields:
            _add_field(proto, full_name, name, number, kind)
        if full_name == "InferParameter":
            proto.oneof_decl.add(name="parameter_choice")
            for field in proto.field:
                field.oneof_index = 0
    return file


def _add_field(proto: descriptor_pb2.DescriptorProto, message: str, name: str, number: int,
               kind: str) -> None:
    repeated = kind.startswith("repeated ")
    kind = kind.removeprefix("repeated ")
    field = proto.field.add(name=name, number=number,
                            label=_Field.LABEL_REPEATED if repeated else _Field.LABEL_OPTIONAL)
    if kind == _PARAMETERS:  # map<string, InferParameter>: a repeated nested entry message
        entry = proto.nested_type.add(name="ParametersEntry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=_Field.TYPE_STRING,
                        label=_Field.LABEL_OPTIONAL)
        entry.field.add(name="value", number=2, type=_Field.TYPE_MESSAGE,
                        label=_Field.LABEL_OPTIONAL, type_name=f".{PACKAGE}.InferParameter")
        field.label = _Field.LABEL_REPEATED
        field.type = _Field.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{message}.ParametersEntry"
    elif kind in _SCALARS:
        field.type = _SCALARS[kind]
    else:
        field.type = _Field.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{kind}"
    if repeated and kind in _SCALARS and kind not in ("string", "bytes"):
        field.options.packed = True  # proto3's default for repeated numbers


def _classes() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(
        f"{PACKAGE}.{name}")) for name in MESSAGES}


#: message name (nested as "Outer.Inner") -> message class
CLASSES = _classes()
InferParameter = CLASSES["InferParameter"]
ModelInferRequest = CLASSES["ModelInferRequest"]
ModelInferResponse = CLASSES["ModelInferResponse"]
ModelMetadataResponse = CLASSES["ModelMetadataResponse"]
