//! Replays the kept fuzz corpus (`fuzz/corpus/<target>/`) through the same property checks
//! the cargo fuzz targets run, so every CI run exercises them without cargo-fuzz or nightly.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        // A running fuzzer may replace inputs under us.
        let Ok(data) = std::fs::read(&path) else {
            continue;
        };
        // Deeply nested regexes and YAML recurse: unoptimised frames are several times the
        // size of release ones (the release fuzz binaries take every input in a 1 MiB
        // stack), so the debug replay gets room a test thread's 2 MiB does not give.
        let outcome = std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || check(&data))
            .unwrap()
            .join();
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        inputs += 1;
    }
    assert!(inputs > 0, "no corpus for {target}");
}

#[test]
fn manifest_corpus() {
    replay("manifest", checks::manifest);
}

#[test]
fn configmap_corpus() {
    replay("configmap", checks::configmap);
}

#[test]
fn router_corpus() {
    replay("router", checks::router);
}

#[test]
fn headers_corpus() {
    replay("headers", checks::headers);
}

#[test]
fn http1_corpus() {
    replay("http1", checks::http1);
}

#[test]
fn upstream_response_corpus() {
    replay("upstream_response", checks::upstream_response);
}
