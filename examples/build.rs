fn main() -> std::io::Result<()> {
    anygrpc_build::compile_protos(&["proto/echo.proto", "proto/route_guide.proto"], &["proto"])
}
