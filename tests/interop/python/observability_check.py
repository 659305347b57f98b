"""The observability services of an anygrpc server, read by the gRPC C-core's own Python tools.

Starts `observability --serve`, then, over one grpcio channel:
- grpcio-reflection's descriptor database lists the services and fetches the echo service's file
  descriptor (v1alpha), from which the call's message classes are built: no generated code;
- a call that fails carries a google.rpc.BadRequest that grpcio-status's `rpc_status.from_call`
  reads;
- grpcio-channelz's stub reads the server's call counts.
Exits non-zero, saying what differed, on the first failure.
"""

import argparse
import subprocess
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.rpc import error_details_pb2
from grpc_channelz.v1 import channelz_pb2, channelz_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

ECHO = "anygrpc.examples.echo.Echo"


def check(ok, what):
    if not ok:
        raise SystemExit(f"FAIL: {what}")
    print(f"ok: {what}")


def run(addr):
    with grpc.insecure_channel(addr) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        check(ECHO in services, f"reflection lists {ECHO} (got {list(services)})")
        check(
            "grpc.channelz.v1.Channelz" in services,
            "reflection lists grpc.channelz.v1.Channelz",
        )
        file = database.FindFileContainingSymbol(ECHO)
        check(file.package == "anygrpc.examples.echo", f"file descriptor {file.name} fetched")

        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName(ECHO).FindMethodByName("UnaryEcho")
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        unary_echo = channel.unary_unary(
            f"/{ECHO}/UnaryEcho",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        reply = unary_echo(request_class(message="hi"))
        check(reply.message == "hi", "a call built from reflected descriptors")

        try:
            unary_echo(request_class())
            check(False, "an empty message fails")
        except grpc.RpcError as error:
            status = rpc_status.from_call(error)
            check(status is not None, "grpc_status.rpc_status reads the details")
            check(status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], "code 3 in google.rpc.Status")
            bad_request = error_details_pb2.BadRequest()
            check(status.details[0].Unpack(bad_request), "the detail unpacks as BadRequest")
            violation = bad_request.field_violations[0]
            check(
                (violation.field, violation.description) == ("message", "must not be empty"),
                f"BadRequest field violation {violation.field!r}: {violation.description!r}",
            )

        channelz = channelz_pb2_grpc.ChannelzStub(channel)
        servers = channelz.GetServers(channelz_pb2.GetServersRequest()).server
        check(len(servers) == 1, "channelz lists the one server")
        data = servers[0].data
        # The reflection stream, two echo calls and this query at least.
        check(data.calls_started >= 4, f"channelz counts {data.calls_started} calls started")
        check(data.calls_failed >= 1, f"channelz counts {data.calls_failed} failed")
        sockets = channelz.GetServerSockets(
            channelz_pb2.GetServerSocketsRequest(server_id=servers[0].ref.server_id)
        ).socket_ref
        check(len(sockets) >= 1, "channelz lists the server's connection")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server-bin", required=True)
    args = parser.parse_args()
    server = subprocess.Popen(
        [args.server_bin, "--serve", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = server.stdout.readline()
        if not line.startswith("listening on "):
            raise SystemExit(f"FAIL: the server did not start: {line!r}")
        run(line.split()[-1])
    finally:
        server.kill()
        server.wait()
    print("observability: the C-core's reflection, status and channelz clients all agree")


if __name__ == "__main__":
    sys.exit(main())
