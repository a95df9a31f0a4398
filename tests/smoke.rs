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
