//! Cluster mode against an in-process fake API server driven through the real kube::Client:
//! initial sync, live changes of every kind, watch resume, 410 relist, the API server going
//! away, class filtering, namespace selection, leader election with status, and Events.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::fake_apiserver::FakeApi;
use support::*;

const SECOND: Duration = Duration::from_secs(1);

fn ingress_json(
    ns: &str,
    name: &str,
    class: Option<&str>,
    annotation: Option<&str>,
    host: &str,
    svc: &str,
) -> Value {
    let mut obj = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"rules": [{"host": host, "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": svc, "port": {"number": 80}}}}
        ]}}]}
    });
    if let Some(class) = class {
        obj["spec"]["ingressClassName"] = json!(class);
    }
    if let Some(a) = annotation {
        obj["metadata"]["annotations"] = json!({"kubernetes.io/ingress.class": a});
    }
    obj
}

fn slice_json(ns: &str, name: &str, service: &str, backend: &Backend) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": backend.addr.port()}],
        "endpoints": [{"addresses": [backend.addr.ip().to_string()], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": "web-1", "namespace": ns}}]
    })
}

/// Class, Service, slice and Ingress for `shop.example` -> `web`.
fn seed(fake: &FakeApi, backend: &Backend) {
    fake.apply_yaml(
        &(ingress_class()
            + &service("shop", "web", 80, &[backend.addr])
            + &ingress("shop", "web", "shop.example", &[("/", "Prefix", "web", 80)])),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_then_routing() {
    let fake = FakeApi::start().await;
    let backend = Backend::start("web").await;
    seed(&fake, &backend);
    let sluice = KubeSluice::start(kube_cli(&fake.url(), "sluice-0")).await;
    let reply = sluice.get("shop.example", "/cart").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["backend"], "web");
    assert_eq!(sluice.get("other.example", "/").await.status, 404);
    // Every kind was listed once and then watched.
    for plural in [
        "ingressclasses",
        "ingresses",
        "services",
        "endpointslices",
        "secrets",
    ] {
        assert_eq!(
            fake.list_count(plural),
            1,
            "{plural}: {:?}",
            fake.requests()
        );
    }
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_changes_of_every_kind_route_within_a_second() {
    let fake = FakeApi::start().await;
    let web = Backend::start("web").await;
    let api = Backend::start("api").await;
    seed(&fake, &web);
    let sluice = KubeSluice::start(kube_cli(&fake.url(), "sluice-0")).await;
    sluice.wait_status("shop.example", "/", 200, SECOND).await;

    // Ingress added.
    fake.apply_yaml(
        &(service("shop", "api", 80, &[api.addr])
            + &ingress("shop", "api", "api.example", &[("/", "Prefix", "api", 80)])),
    );
    let reply = sluice.wait_status("api.example", "/", 200, SECOND).await;
    assert_eq!(reply.json()["backend"], "api");

    // Ingress modified: api.example now goes to web.
    fake.apply_yaml(&ingress(
        "shop",
        "api",
        "api.example",
        &[("/", "Prefix", "web", 80)],
    ));
    let deadline = std::time::Instant::now() + SECOND;
    loop {
        let reply = sluice.get("api.example", "/").await;
        if reply.status == 200 && reply.json()["backend"] == "web" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "modified Ingress not live within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // EndpointSlice modified: web's endpoints now point at the api backend.
    fake.apply(slice_json("shop", "web-0", "web", &api));
    let deadline = std::time::Instant::now() + SECOND;
    loop {
        let reply = sluice.get("shop.example", "/").await;
        if reply.status == 200 && reply.json()["backend"] == "api" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "modified EndpointSlice not live within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // EndpointSlice deleted: no endpoints -> 503.
    assert!(fake.delete("EndpointSlice", "shop", "web-0"));
    sluice.wait_status("shop.example", "/", 503, SECOND).await;
    // Added back.
    fake.apply(slice_json("shop", "web-0", "web", &web));
    sluice.wait_status("shop.example", "/", 200, SECOND).await;

    // Service deleted -> 503; added back -> 200.
    let svc = fake.get("Service", "shop", "web").unwrap();
    assert!(fake.delete("Service", "shop", "web"));
    sluice.wait_status("shop.example", "/", 503, SECOND).await;
    let mut svc = svc;
    svc["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    fake.apply(svc);
    sluice.wait_status("shop.example", "/", 200, SECOND).await;

    // Ingress deleted -> 404.
    assert!(fake.delete("Ingress", "shop", "web"));
    sluice.wait_status("shop.example", "/", 404, SECOND).await;
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_watch_resumes_without_relisting() {
    let fake = FakeApi::start().await;
    let web = Backend::start("web").await;
    seed(&fake, &web);
    let sluice = KubeSluice::start(kube_cli(&fake.url(), "sluice-0")).await;
    let lists = fake.list_count("ingresses");
    for round in 0..3 {
        fake.break_watches();
        let host = format!("r{round}.example");
        fake.apply_yaml(&ingress(
            "shop",
            &format!("r{round}"),
            &host,
            &[("/", "Prefix", "web", 80)],
        ));
        sluice.wait_status(&host, "/", 200, 5 * SECOND).await;
    }
    assert_eq!(
        fake.list_count("ingresses"),
        lists,
        "a resumed watch must not relist"
    );
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_away_keeps_serving_and_410_relists() {
    let fake = FakeApi::start().await;
    let web = Backend::start("web").await;
    seed(&fake, &web);
    fake.apply_yaml(&ingress(
        "shop",
        "gone",
        "gone.example",
        &[("/", "Prefix", "web", 80)],
    ));
    let sluice = KubeSluice::start(kube_cli(&fake.url(), "sluice-0")).await;
    sluice.wait_status("gone.example", "/", 200, SECOND).await;
    let lists = fake.list_count("ingresses");

    fake.set_down(true);
    tokio::time::sleep(2 * SECOND).await;
    // The last snapshot keeps serving and the pod stays healthy.
    assert!(sluice.running().health.healthy());
    assert_eq!(sluice.get("shop.example", "/").await.status, 200);
    // Changed while the watch was away, and the history compacted: only a relist sees it.
    assert!(fake.delete("Ingress", "shop", "gone"));
    fake.compact();
    fake.set_down(false);
    sluice
        .wait_status("gone.example", "/", 404, 40 * SECOND)
        .await;
    assert!(fake.list_count("ingresses") > lists, "410 Gone must relist");
    assert_eq!(sluice.get("shop.example", "/").await.status, 200);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_filtering_matrix() {
    let fake = FakeApi::start().await;
    let web = Backend::start("web").await;
    fake.apply_yaml(
        &(ingress_class_named("external", "k8s.io/external")
            + &ingress_class_named("internal", "k8s.io/internal")
            + &service("shop", "web", 80, &[web.addr])),
    );
    fake.apply(ingress_json(
        "shop",
        "by-class",
        Some("external"),
        None,
        "ext.example",
        "web",
    ));
    fake.apply(ingress_json(
        "shop",
        "other-class",
        Some("internal"),
        None,
        "int.example",
        "web",
    ));
    fake.apply(ingress_json(
        "shop",
        "by-annotation",
        None,
        Some("external"),
        "ann.example",
        "web",
    ));
    fake.apply(ingress_json(
        "shop",
        "other-annotation",
        None,
        Some("internal"),
        "ann-int.example",
        "web",
    ));
    fake.apply(ingress_json(
        "shop",
        "no-class",
        None,
        None,
        "none.example",
        "web",
    ));
    fake.apply(ingress_json(
        "shop",
        "unknown-class",
        Some("missing"),
        None,
        "missing.example",
        "web",
    ));

    let mut cli = kube_cli(&fake.url(), "external-0");
    cli.controller_class = "k8s.io/external".into();
    cli.ingress_class = "external".into();
    let external = KubeSluice::start(cli).await;
    let mut cli = kube_cli(&fake.url(), "internal-0");
    cli.controller_class = "k8s.io/internal".into();
    cli.ingress_class = "internal".into();
    cli.watch_ingress_without_class = true;
    cli.election_id = "internal-leader".into();
    let internal = KubeSluice::start(cli).await;

    let matrix = [
        ("ext.example", 200, 404),
        ("int.example", 404, 200),
        ("ann.example", 200, 404),
        ("ann-int.example", 404, 200),
        ("none.example", 404, 200),
        ("missing.example", 404, 404),
    ];
    for (host, ext_status, int_status) in matrix {
        assert_eq!(
            external.get(host, "/").await.status,
            ext_status,
            "external controller, {host}"
        );
        assert_eq!(
            internal.get(host, "/").await.status,
            int_status,
            "internal controller, {host}"
        );
    }
    // Switching an Ingress's class moves it between controllers live.
    fake.apply(ingress_json(
        "shop",
        "by-class",
        Some("internal"),
        None,
        "ext.example",
        "web",
    ));
    external.wait_status("ext.example", "/", 404, SECOND).await;
    internal.wait_status("ext.example", "/", 200, SECOND).await;
    external.shutdown().await;
    internal.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_selector_follows_namespace_labels() {
    let fake = FakeApi::start().await;
    let web = Backend::start("web").await;
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web", "labels": {"team": "web"}}}));
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other", "labels": {"team": "db"}}}));
    fake.apply_yaml(
        &(ingress_class()
            + &service("web", "web", 80, &[web.addr])
            + &ingress("web", "a", "a.example", &[("/", "Prefix", "web", 80)])
            + &service("other", "web", 80, &[web.addr])
            + &ingress("other", "b", "b.example", &[("/", "Prefix", "web", 80)])),
    );
    let mut cli = kube_cli(&fake.url(), "sluice-0");
    cli.watch_namespace_selector = Some("team=web".into());
    let sluice = KubeSluice::start(cli).await;
    assert_eq!(sluice.get("a.example", "/").await.status, 200);
    assert_eq!(sluice.get("b.example", "/").await.status, 404);
    // Relabel: `other` joins, `web` leaves.
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other", "labels": {"team": "web"}}}));
    sluice.wait_status("b.example", "/", 200, 5 * SECOND).await;
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web", "labels": {"team": "db"}}}));
    sluice.wait_status("a.example", "/", 404, 5 * SECOND).await;
    sluice.shutdown().await;
}

fn holder(fake: &FakeApi, lease: &str) -> String {
    fake.get("Lease", "network", lease)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
        .unwrap_or_default()
}

fn status_of(fake: &FakeApi, ns: &str, name: &str) -> Value {
    fake.get("Ingress", ns, name)
        .map(|i| i["status"]["loadBalancer"]["ingress"].clone())
        .unwrap_or(Value::Null)
}

fn leader_gauge(sluice: &KubeSluice) -> Option<String> {
    sluice
        .metrics()
        .lines()
        .find(|l| l.starts_with("nginx_ingress_controller_leader_election_status{"))
        .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_writes_status_and_fails_over() {
    let fake = FakeApi::start().await;
    let web = Backend::start("web").await;
    seed(&fake, &web);
    let start = |pod: &str| {
        let mut cli = kube_cli(&fake.url(), pod);
        cli.publish_status_address = Some("192.0.2.10, lb.example".into());
        KubeSluice::start(cli)
    };
    let a = start("sluice-a").await;
    let b = start("sluice-b").await;
    eventually(5 * SECOND, "a leader is elected", || {
        !holder(&fake, "ingress-controller-leader").is_empty()
    })
    .await;
    let expected = json!([{"ip": "192.0.2.10"}, {"hostname": "lb.example"}]);
    eventually(5 * SECOND, "the leader writes status", || {
        status_of(&fake, "shop", "web") == expected
    })
    .await;
    // Exactly one leader, for a while.
    let first = holder(&fake, "ingress-controller-leader");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            holder(&fake, "ingress-controller-leader"),
            first,
            "leadership must be stable"
        );
        let gauges = (leader_gauge(&a), leader_gauge(&b));
        let ones = [&gauges.0, &gauges.1]
            .iter()
            .filter(|g| g.as_deref() == Some("1"))
            .count();
        assert_eq!(ones, 1, "exactly one leader_election_status 1: {gauges:?}");
    }
    // Status is patched only when it differs: no further writes.
    let writes = |fake: &FakeApi| {
        fake.requests()
            .iter()
            .filter(|r| r.contains("/ingresses/web/status"))
            .count()
    };
    let before = writes(&fake);
    tokio::time::sleep(SECOND).await;
    assert_eq!(writes(&fake), before);

    // The leader stops (no Pod objects exist, so it cannot tell it is the last replica and
    // leaves the status alone); the other takes over and writes status for a new Ingress.
    let (leader, follower, follower_name) = if first == "sluice-a" {
        (a, b, "sluice-b")
    } else {
        (b, a, "sluice-a")
    };
    leader.shutdown().await;
    assert_eq!(status_of(&fake, "shop", "web"), expected);
    eventually(5 * SECOND, "the follower takes over", || {
        holder(&fake, "ingress-controller-leader") == follower_name
    })
    .await;
    // The gauge follows the Lease write that made it leader: the fake API server sees the
    // write before the new leader has recorded it.
    eventually(
        5 * SECOND,
        "the new leader reports leader_election_status 1",
        || leader_gauge(&follower).as_deref() == Some("1"),
    )
    .await;
    fake.apply_yaml(&ingress(
        "shop",
        "late",
        "late.example",
        &[("/", "Prefix", "web", 80)],
    ));
    eventually(5 * SECOND, "the new leader writes status", || {
        status_of(&fake, "shop", "late") == expected
    })
    .await;
    follower.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_replica_clears_status_on_shutdown() {
    let fake = FakeApi::start().await;
    let web = Backend::start("web").await;
    seed(&fake, &web);
    fake.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sluice-0", "namespace": "network", "labels": {"app": "sluice", "pod-template-hash": "abc"}},
        "status": {"phase": "Running"}}));
    let mut cli = kube_cli(&fake.url(), "sluice-0");
    cli.publish_status_address = Some("192.0.2.10".into());
    let sluice = KubeSluice::start(cli).await;
    eventually(5 * SECOND, "status written", || {
        status_of(&fake, "shop", "web") == json!([{"ip": "192.0.2.10"}])
    })
    .await;
    sluice.shutdown().await;
    let cleared = status_of(&fake, "shop", "web");
    assert!(
        cleared.as_array().is_some_and(|a| a.is_empty()) || cleared.is_null(),
        "{cleared}"
    );
    assert_eq!(
        holder(&fake, "ingress-controller-leader"),
        "",
        "the Lease is released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ingress_gets_one_event() {
    let fake = FakeApi::start().await;
    let web = Backend::start("web").await;
    seed(&fake, &web);
    fake.apply_yaml(&ingress(
        "shop",
        "broken",
        "broken.example",
        &[("/", "Prefix", "nowhere", 80)],
    ));
    let sluice = KubeSluice::start(kube_cli(&fake.url(), "sluice-0")).await;
    let events_for = |fake: &FakeApi| -> Vec<Value> {
        fake.list("Event")
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == "broken")
            .collect()
    };
    eventually(5 * SECOND, "an Event about the broken Ingress", || {
        !events_for(&fake).is_empty()
    })
    .await;
    let event = &events_for(&fake)[0];
    assert_eq!(event["metadata"]["namespace"], "shop");
    assert_eq!(event["involvedObject"]["kind"], "Ingress");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "SluiceConfigProblem");
    assert!(
        event["message"].as_str().unwrap().contains("nowhere"),
        "{event}"
    );
    // Unrelated changes republish; the same problem is not posted again.
    fake.apply_yaml(&ingress(
        "shop",
        "more",
        "more.example",
        &[("/", "Prefix", "web", 80)],
    ));
    sluice.wait_status("more.example", "/", 200, SECOND).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events_for(&fake).len(), 1);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_namespace_limits_every_watch() {
    let fake = FakeApi::start().await;
    let web = Backend::start("web").await;
    fake.apply_yaml(
        &(ingress_class()
            + &service("web", "web", 80, &[web.addr])
            + &ingress("web", "a", "a.example", &[("/", "Prefix", "web", 80)])
            + &service("other", "web", 80, &[web.addr])
            + &ingress("other", "b", "b.example", &[("/", "Prefix", "web", 80)])),
    );
    let mut cli = kube_cli(&fake.url(), "sluice-0");
    cli.watch_namespace = Some("web".into());
    let sluice = KubeSluice::start(cli).await;
    assert_eq!(sluice.get("a.example", "/").await.status, 200);
    assert_eq!(sluice.get("b.example", "/").await.status, 404);
    assert!(fake
        .requests()
        .iter()
        .filter(|r| r.contains("/ingresses") || r.contains("/services"))
        .all(|r| r.contains("/namespaces/web/")));
    sluice.shutdown().await;
}

fn kube_client(fake: &FakeApi) -> kube::Client {
    kube::Client::try_from(kube::Config::new(fake.url().parse().unwrap())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_race_renewal_conflict_and_expiry() {
    use sluice::leader::{ElectionConfig, Elector};
    let fake = FakeApi::start().await;
    let config =
        |id: &str| ElectionConfig::from_ttl("lease", "network", id, Duration::from_secs(2));
    let mut a = Elector::new(kube_client(&fake), config("a"));
    let mut b = Elector::new(kube_client(&fake), config("b"));
    // Both race to create it: exactly one wins, the other sees 409.
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra ^ rb, "exactly one acquires: a={ra} b={rb}");
    let (mut holder, mut other) = if ra { (a, b) } else { (b, a) };
    // While the holder renews, the other never gets it.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(holder.try_acquire_or_renew().await.unwrap());
        assert!(!other.try_acquire_or_renew().await.unwrap());
    }
    // An update with a stale resourceVersion is refused with 409 Conflict.
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(kube_client(&fake), "network");
    let mut stale = leases.get("lease").await.unwrap();
    assert!(holder.try_acquire_or_renew().await.unwrap());
    stale.spec.as_mut().unwrap().holder_identity = Some("intruder".into());
    let err = leases
        .replace("lease", &Default::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    // The holder stops renewing: after one lease duration (observed locally) the other
    // takes over, and the old holder then sees it has lost.
    let _ = other.try_acquire_or_renew().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(other.try_acquire_or_renew().await.unwrap());
    assert!(!holder.try_acquire_or_renew().await.unwrap());
    let lease = fake.get("Lease", "network", "lease").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_named_by_flag_is_watched() {
    let fake = FakeApi::start().await;
    let web = Backend::start("web").await;
    seed(&fake, &web);
    let configmap = |name: &str, tokens: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "network"},
               "data": {"server-tokens": tokens}})
    };
    fake.apply(configmap("sluice", "true"));
    fake.apply(configmap("unrelated", "false"));
    let mut cli = kube_cli(&fake.url(), "sluice-0");
    cli.configmap = Some("network/sluice".parse().unwrap());
    let sluice = KubeSluice::start(cli).await;
    let tokens = |s: &KubeSluice| s.running().state.snapshot.load().settings.server_tokens;
    assert!(tokens(&sluice));
    fake.apply(configmap("sluice", "false"));
    eventually(SECOND, "ConfigMap change applied", || !tokens(&sluice)).await;
    fake.apply(configmap("unrelated", "true"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!tokens(&sluice), "another ConfigMap must not count");
    assert!(fake
        .requests()
        .iter()
        .filter(|r| r.contains("/configmaps"))
        .all(|r| r.contains("/namespaces/network/configmaps")
            && r.contains("fieldSelector=metadata.name")));
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_service_addresses_become_status() {
    let fake = FakeApi::start().await;
    let web = Backend::start("web").await;
    seed(&fake, &web);
    fake.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "sluice", "namespace": "network"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalIPs": ["192.0.2.7"],
                 "ports": [{"name": "http", "port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}}));
    let mut cli = kube_cli(&fake.url(), "sluice-0");
    cli.publish_service = Some("network/sluice".parse().unwrap());
    cli.update_status_on_shutdown = false;
    let sluice = KubeSluice::start(cli).await;
    let expected = json!([{"ip": "192.0.2.7"}, {"ip": "203.0.113.5"}]);
    eventually(5 * SECOND, "status from the LoadBalancer Service", || {
        status_of(&fake, "shop", "web") == expected
    })
    .await;
    sluice.shutdown().await;
    assert_eq!(status_of(&fake, "shop", "web"), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rbac_for_ingress_classes_falls_back_to_the_annotation() {
    let fake = FakeApi::start().await;
    let web = Backend::start("web").await;
    fake.forbid("ingressclasses");
    fake.apply_yaml(&service("shop", "web", 80, &[web.addr]));
    fake.apply(ingress_json(
        "shop",
        "by-annotation",
        None,
        Some("nginx"),
        "ann.example",
        "web",
    ));
    fake.apply(ingress_json(
        "shop",
        "by-class",
        Some("nginx"),
        None,
        "class.example",
        "web",
    ));
    let sluice = KubeSluice::start(kube_cli(&fake.url(), "sluice-0")).await;
    assert_eq!(sluice.get("ann.example", "/").await.status, 200);
    assert_eq!(sluice.get("class.example", "/").await.status, 404);
    sluice.shutdown().await;
}

/// DESIGN: `proxy/` and `snapshot/` never import `kube` or `k8s_openapi`.
#[test]
fn data_path_knows_no_kubernetes_types() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root.join("proxy"), &mut files);
    walk(&root.join("snapshot"), &mut files);
    assert!(!files.is_empty());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for word in ["k8s_openapi", "kube::", "crate::source", "crate::store"] {
            assert!(!text.contains(word), "{} mentions {word}", file.display());
        }
    }
}
