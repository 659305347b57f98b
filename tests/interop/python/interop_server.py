"""The interop test server on grpcio (the gRPC C-core). Prints `listening on port N`."""

import os
import socket
import time
from concurrent import futures

import grpc

import common

ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"
CODES = {code.value[0]: code for code in grpc.StatusCode}
# What UnaryCall returns when asked for the server's id (pick_first_unary): one per process.
SERVER_ID = f"grpcio-interop-server-{os.getpid()}"


def main():
    p = common.parser(__doc__)
    p.add_argument("--host", default="[::]")
    p.add_argument("--port", type=int, default=10000)
    p.add_argument("--use_tls", type=common.boolean, nargs="?", const=True, default=False)
    p.add_argument("--tls_cert_file", default=f"{common.CERTS}/server1.pem")
    p.add_argument("--tls_key_file", default=f"{common.CERTS}/server1.key")
    args = p.parse_args()
    empty_pb2, messages_pb2, test_pb2_grpc = common.import_stubs(args.stubs_dir)

    def zeros(size):
        return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=b"\0" * size)

    def echo_metadata(context):
        metadata = dict(context.invocation_metadata())
        if ECHO_INITIAL in metadata:
            context.send_initial_metadata(((ECHO_INITIAL, metadata[ECHO_INITIAL]),))
        if ECHO_TRAILING in metadata:
            context.set_trailing_metadata(((ECHO_TRAILING, metadata[ECHO_TRAILING]),))

    def maybe_abort(status, context):
        if status is not None and status.code != 0:
            context.abort(CODES[status.code], status.message)

    def responses(parameters, context):
        if any(p.compressed.value for p in parameters):
            context.set_compression(grpc.Compression.Gzip)
        for p in parameters:
            if p.interval_us:
                time.sleep(p.interval_us / 1e6)
            if not p.compressed.value:
                context.disable_next_message_compression()
            yield messages_pb2.StreamingOutputCallResponse(payload=zeros(p.size))

    class TestService(test_pb2_grpc.TestServiceServicer):
        def EmptyCall(self, request, context):
            echo_metadata(context)
            return empty_pb2.Empty()

        def UnaryCall(self, request, context):
            echo_metadata(context)
            maybe_abort(request.response_status if request.HasField("response_status") else None, context)
            if request.response_compressed.value:
                context.set_compression(grpc.Compression.Gzip)
            else:
                context.set_compression(grpc.Compression.NoCompression)
            return messages_pb2.SimpleResponse(
                payload=zeros(request.response_size),
                server_id=SERVER_ID if request.fill_server_id else "",
                hostname=socket.gethostname(),
            )

        CacheableUnaryCall = UnaryCall

        def StreamingOutputCall(self, request, context):
            maybe_abort(request.response_status if request.HasField("response_status") else None, context)
            yield from responses(list(request.response_parameters), context)

        def StreamingInputCall(self, request_iterator, context):
            total = sum(len(r.payload.body) for r in request_iterator)
            return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=total)

        def FullDuplexCall(self, request_iterator, context):
            echo_metadata(context)
            for request in request_iterator:
                maybe_abort(request.response_status if request.HasField("response_status") else None, context)
                yield from responses(list(request.response_parameters), context)

        def HalfDuplexCall(self, request_iterator, context):
            parameters = [p for r in request_iterator for p in r.response_parameters]
            yield from responses(parameters, context)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        options=[("grpc.max_receive_message_length", 16 << 20)],
    )
    test_pb2_grpc.add_TestServiceServicer_to_server(TestService(), server)
    address = f"{args.host}:{args.port}"
    if args.use_tls:
        credentials = grpc.ssl_server_credentials([(common.read(args.tls_key_file), common.read(args.tls_cert_file))])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    server.start()
    print(f"listening on port {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
