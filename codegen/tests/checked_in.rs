//! The generated code checked into the repository (the channelz service's messages, client and
//! server trait in `transport/src/channelz/generated.rs`) is what the generator makes from its
//! `.proto` now. `UPDATE_GENERATED=1 cargo test -p anygrpc-build --test checked_in` rewrites it.

use std::path::Path;

#[test]
fn channelz_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::temp_dir().join(format!("anygrpc-checked-in-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    anygrpc_build::configure()
        .out_dir(&out)
        .compile(
            &[root.join("transport/proto/grpc/channelz/v1/channelz.proto")],
            &[root.join("transport/proto")],
        )
        .unwrap();
    let generated = std::fs::read_to_string(out.join("grpc.channelz.v1.rs")).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    let checked_in = root.join("transport/src/channelz/generated.rs");
    if std::env::var_os("UPDATE_GENERATED").is_some() {
        std::fs::write(&checked_in, &generated).unwrap();
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == generated,
        "{} is stale: run UPDATE_GENERATED=1 cargo test -p anygrpc-build --test checked_in",
        checked_in.display()
    );
}
