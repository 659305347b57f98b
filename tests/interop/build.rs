fn main() -> std::io::Result<()> {
    anygrpc_build::compile_protos(&["proto/src/proto/grpc/testing/test.proto"], &["proto"])
}
