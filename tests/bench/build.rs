fn main() -> std::io::Result<()> {
    anygrpc_build::compile_protos(&["proto/bench.proto"], &["proto"])
}
