//! Replays every seed and every saved finding in `corpus/<target>/` through its target.

use std::path::Path;

#[test]
fn corpora_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, target) in anygrpc_fuzz::TARGETS {
        let dir = root.join(name);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| target(&data));
            assert!(result.is_ok(), "{name} failed on {}", path.display());
            inputs += 1;
        }
        assert!(inputs > 0, "{name} has an empty corpus");
        println!("{name}: {inputs} inputs");
    }
}
