"""The interop test client on grpcio (the gRPC C-core).

Runs the named cases, prints one line per case and exits non-zero if any failed. Cases that
grpcio's Python API cannot express are listed in UNSUPPORTED with the reason; asking for one
is an error.
"""

import queue
import sys

import grpc

import common

CASES = [
    "empty_unary",
    "large_unary",
    "client_compressed_unary",
    "client_streaming",
    "server_streaming",
    "ping_pong",
    "empty_stream",
    "custom_metadata",
    "status_code_and_message",
    "special_status_message",
    "unimplemented_method",
    "unimplemented_service",
    "cancel_after_begin",
    "cancel_after_first_response",
    "timeout_on_sleeping_server",
    "pick_first_unary",
    "very_large_request",
]

UNSUPPORTED = {
    "client_compressed_streaming": "grpcio cannot send one message of a compressed stream uncompressed",
    "server_compressed_unary": "grpcio does not tell a client whether a response arrived compressed",
    "server_compressed_streaming": "grpcio does not tell a client whether a response arrived compressed",
}

INITIAL = ("x-grpc-test-echo-initial", "test_initial_metadata_value")
TRAILING = ("x-grpc-test-echo-trailing-bin", b"\xab\xab\xab")
SPECIAL = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"


class Failure(Exception):
    pass


def ensure(condition, message):
    if not condition:
        raise Failure(message)


class Pipe:
    """A request iterator fed from the test."""

    def __init__(self):
        self._queue = queue.Queue()

    def add(self, item):
        self._queue.put(item)

    def close(self):
        self._queue.put(None)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is None:
            raise StopIteration()
        return item


def main():
    p = common.parser(__doc__)
    p.add_argument("--server_host", default="localhost")
    p.add_argument("--server_port", type=int, required=True)
    p.add_argument("--server_host_override", default="")
    p.add_argument("--test_case", default="large_unary")
    p.add_argument("--use_tls", type=common.boolean, nargs="?", const=True, default=False)
    p.add_argument("--use_test_ca", type=common.boolean, nargs="?", const=True, default=False)
    p.add_argument("--ca_file", default="")
    args = p.parse_args()
    empty_pb2, messages_pb2, test_pb2_grpc = common.import_stubs(args.stubs_dir)

    cases = CASES if args.test_case == "all" else args.test_case.split(",")
    for case in cases:
        if case in UNSUPPORTED:
            sys.exit(f"{case} is not supported by this client: {UNSUPPORTED[case]}")
        if case not in CASES:
            sys.exit(f"unknown test case {case!r}; valid cases: all, {', '.join(CASES)}")

    target = f"{args.server_host}:{args.server_port}"
    options = []
    if args.server_host_override:
        options.append(("grpc.ssl_target_name_override", args.server_host_override))
        options.append(("grpc.default_authority", args.server_host_override))
    if args.use_tls:
        root = None
        if args.ca_file:
            root = common.read(args.ca_file)
        elif args.use_test_ca:
            root = common.read(f"{common.CERTS}/ca.pem")
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root), options)
    else:
        channel = grpc.insecure_channel(target, options)
    stub = test_pb2_grpc.TestServiceStub(channel)

    def zeros(size):
        return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=b"\0" * size)

    def check_payload(payload, size):
        ensure(len(payload.body) == size, f"payload of {len(payload.body)} bytes, expected {size}")
        ensure(payload.body == b"\0" * size, "payload is not all zeros")

    def expect_code(fn, code):
        try:
            fn()
        except grpc.RpcError as e:
            ensure(e.code() == code, f"expected {code}, got {e.code()}: {e.details()}")
            return e
        raise Failure(f"expected {code}, the call succeeded")

    def large_request(**fields):
        return messages_pb2.SimpleRequest(response_size=314159, payload=zeros(271828), **fields)

    def ping(response_size, payload_size):
        return messages_pb2.StreamingOutputCallRequest(
            response_parameters=[messages_pb2.ResponseParameters(size=response_size)],
            payload=zeros(payload_size),
        )

    def empty_unary():
        ensure(isinstance(stub.EmptyCall(empty_pb2.Empty()), empty_pb2.Empty), "not an Empty")

    def large_unary():
        check_payload(stub.UnaryCall(large_request()).payload, 314159)

    def pick_first_unary():
        request = messages_pb2.SimpleRequest(response_size=1, fill_server_id=True)
        ids = [stub.UnaryCall(request).server_id for _ in range(100)]
        ensure(ids[0] != "", "an empty server id")
        ensure(all(i == ids[0] for i in ids), f"server ids differ: {sorted(set(ids))}")

    def client_compressed_unary():
        expect = lambda value: large_request(expect_compressed=messages_pb2.BoolValue(value=value))
        expect_code(lambda: stub.UnaryCall(expect(True)), grpc.StatusCode.INVALID_ARGUMENT)
        check_payload(stub.UnaryCall(expect(True), compression=grpc.Compression.Gzip).payload, 314159)
        check_payload(stub.UnaryCall(expect(False)).payload, 314159)

    def client_streaming():
        requests = [messages_pb2.StreamingInputCallRequest(payload=zeros(n)) for n in (27182, 8, 1828, 45904)]
        response = stub.StreamingInputCall(iter(requests))
        ensure(response.aggregated_payload_size == 74922, f"aggregated {response.aggregated_payload_size}")

    def server_streaming():
        sizes = [31415, 9, 2653, 58979]
        request = messages_pb2.StreamingOutputCallRequest(
            response_parameters=[messages_pb2.ResponseParameters(size=n) for n in sizes]
        )
        responses = list(stub.StreamingOutputCall(request))
        ensure(len(responses) == len(sizes), f"{len(responses)} responses")
        for response, size in zip(responses, sizes):
            check_payload(response.payload, size)

    def ping_pong():
        pipe = Pipe()
        responses = stub.FullDuplexCall(pipe)
        for response_size, payload_size in ((31415, 27182), (9, 8), (2653, 1828), (58979, 45904)):
            pipe.add(ping(response_size, payload_size))
            check_payload(next(responses).payload, response_size)
        pipe.close()
        ensure(next(responses, None) is None, "a response after the last ping")

    def empty_stream():
        ensure(list(stub.FullDuplexCall(iter([]))) == [], "a response to an empty stream")

    def check_echo(initial, trailing, where):
        ensure(INITIAL in initial, f"{where}: initial metadata echo missing: {initial}")
        ensure(TRAILING in trailing, f"{where}: trailing metadata echo missing: {trailing}")

    def custom_metadata():
        response, call = stub.UnaryCall.with_call(large_request(), metadata=(INITIAL, TRAILING))
        check_payload(response.payload, 314159)
        check_echo(call.initial_metadata(), call.trailing_metadata(), "UnaryCall")
        responses = stub.FullDuplexCall(iter([ping(314159, 271828)]), metadata=(INITIAL, TRAILING))
        replies = list(responses)
        ensure(len(replies) == 1, f"{len(replies)} responses")
        check_payload(replies[0].payload, 314159)
        check_echo(responses.initial_metadata(), responses.trailing_metadata(), "FullDuplexCall")

    def status_echo(message):
        status = messages_pb2.EchoStatus(code=2, message=message)
        e = expect_code(lambda: stub.UnaryCall(messages_pb2.SimpleRequest(response_status=status)), grpc.StatusCode.UNKNOWN)
        ensure(e.details() == message, f"UnaryCall message {e.details()!r}")
        request = messages_pb2.StreamingOutputCallRequest(response_status=status)
        e = expect_code(lambda: list(stub.FullDuplexCall(iter([request]))), grpc.StatusCode.UNKNOWN)
        ensure(e.details() == message, f"FullDuplexCall message {e.details()!r}")

    def unimplemented(path):
        call = channel.unary_unary(
            path,
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )
        expect_code(lambda: call(empty_pb2.Empty()), grpc.StatusCode.UNIMPLEMENTED)

    def cancel_after_begin():
        future = stub.StreamingInputCall.future(Pipe())
        future.cancel()
        ensure(future.cancelled(), "the call was not cancelled")
        ensure(future.code() == grpc.StatusCode.CANCELLED, f"status {future.code()}")

    def cancel_after_first_response():
        pipe = Pipe()
        responses = stub.FullDuplexCall(pipe)
        pipe.add(ping(31415, 27182))
        check_payload(next(responses).payload, 31415)
        responses.cancel()
        expect_code(lambda: next(responses), grpc.StatusCode.CANCELLED)

    def timeout_on_sleeping_server():
        pipe = Pipe()
        responses = stub.FullDuplexCall(pipe, timeout=0.001)
        pipe.add(messages_pb2.StreamingOutputCallRequest(payload=zeros(27182)))
        expect_code(lambda: next(responses), grpc.StatusCode.DEADLINE_EXCEEDED)
        pipe.close()

    def very_large_request():
        request = messages_pb2.SimpleRequest(response_size=10, payload=zeros(10 << 20))
        check_payload(stub.UnaryCall(request, timeout=60).payload, 10)

    runners = {
        "empty_unary": empty_unary,
        "large_unary": large_unary,
        "client_compressed_unary": client_compressed_unary,
        "client_streaming": client_streaming,
        "server_streaming": server_streaming,
        "ping_pong": ping_pong,
        "empty_stream": empty_stream,
        "custom_metadata": custom_metadata,
        "status_code_and_message": lambda: status_echo("test status message"),
        "special_status_message": lambda: status_echo(SPECIAL),
        "unimplemented_method": lambda: unimplemented("/grpc.testing.TestService/UnimplementedCall"),
        "unimplemented_service": lambda: unimplemented("/grpc.testing.UnimplementedService/UnimplementedCall"),
        "cancel_after_begin": cancel_after_begin,
        "cancel_after_first_response": cancel_after_first_response,
        "timeout_on_sleeping_server": timeout_on_sleeping_server,
        "very_large_request": very_large_request,
        "pick_first_unary": pick_first_unary,
    }
    passed = failed = 0
    for case in cases:
        try:
            runners[case]()
            passed += 1
            print(f"PASS {case}", flush=True)
        except (Failure, grpc.RpcError) as e:
            failed += 1
            detail = f"{e.code()}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e)
            print(f"FAIL {case}: {detail}", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
