"""Shared pieces of the grpcio interop peer: flags, stubs, test certificates."""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CERTS = os.path.join(HERE, "..", "certs")


def import_stubs(stubs_dir):
    """Makes the generated grpc.testing modules importable and returns them."""
    sys.path.insert(0, stubs_dir)
    from src.proto.grpc.testing import empty_pb2, messages_pb2, test_pb2_grpc

    return empty_pb2, messages_pb2, test_pb2_grpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def boolean(text):
    if text in ("true", "1", "yes", ""):
        return True
    if text in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--stubs_dir", required=True, help="where grpc_tools.protoc wrote the stubs")
    return p
