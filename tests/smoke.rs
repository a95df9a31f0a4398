//! The shortest end-to-end check: one Ingress, one backend, one request.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ingress_one_backend() {
    let backend = Backend::start("web").await;
    let manifests = ingress_class()
        + &service("shop", "web", 80, &[backend.addr])
        + &ingress("shop", "web", "shop.example", &[("/", "Prefix", "web", 80)]);
    let sluice = Sluice::start(&[("all.yaml", manifests)], |_| {}).await;
    let reply = sluice.get("shop.example", "/cart?x=1").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["backend"], "web");
    assert_eq!(json["uri"], "/cart?x=1");
    assert_eq!(json["headers"]["host"], "shop.example");
    let unknown = sluice.get("other.example", "/").await;
    assert_eq!(unknown.status, 404);
    sluice.shutdown().await;
}

/// The allocator configuration compiled into the binary (src/main.rs) is the one jemalloc
/// runs with: it prints its options with `stats_print`, and any key it does not know as
/// `<jemalloc>: Invalid conf pair`. Fails if the symbol's name stops matching the
/// jemalloc build (the settings would then be silently ignored) or the string has a typo.
#[test]
fn the_binary_runs_with_its_allocator_configuration() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run sluice --version");
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(!stats.contains("<jemalloc>"), "{stats}");
    assert!(
        stats.contains(
            "Global variable malloc_conf: \"tcache_nslots_small_min:64,slab_sizes:4096-8192:16\""
        ),
        "{stats}"
    );
    assert!(stats.contains("opt.tcache_nslots_small_min: 64"), "{stats}");
}
