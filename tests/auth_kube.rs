//! Auth Secrets in cluster mode (against the in-process API server): an `auth-map` Secret,
//! whose keys are user names, survives the trimming of Secrets on arrival; an `auth-file`
//! Secret created after the Ingress naming it turns the location's 503 into basic auth.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};
use support::fake_apiserver::FakeApi;
use support::*;

const LIMIT: Duration = Duration::from_secs(5);

// `htpasswd -nbm bob hunter2` and `htpasswd -nbs carol 'pa:ss'`.
const BOB_APR1: &str = "$apr1$AT/ycPUn$MpXF9Ef8RmoeFvJtRoViM.";
const CAROL_SHA: &str = "{SHA}XyRLaTIb/WCdo8CuWc58gPVHl68=";

fn auth_ingress(name: &str, host: &str, secret: &str, secret_type: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "shop", "annotations": {
            "nginx.ingress.kubernetes.io/auth-type": "basic",
            "nginx.ingress.kubernetes.io/auth-secret": secret,
            "nginx.ingress.kubernetes.io/auth-secret-type": secret_type,
            "nginx.ingress.kubernetes.io/auth-realm": "team",
        }},
        "spec": {"ingressClassName": "nginx", "rules": [{"host": host, "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
        ]}}]}
    })
}

async fn get_as(sluice: &KubeSluice, host: &str, user: &str, password: &str) -> Reply {
    let credentials = base64(format!("{user}:{password}").as_bytes());
    send(
        sluice.running().http_addr,
        Request::get("/")
            .header("host", host)
            .header("authorization", format!("Basic {credentials}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_secrets_reach_the_store() {
    let fake = FakeApi::start().await;
    let backend = Backend::start("web").await;
    fake.apply_yaml(&(ingress_class() + &service("shop", "web", 80, &[backend.addr])));
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "users", "namespace": "shop"},
        "type": "Opaque",
        "data": {"bob": base64(BOB_APR1.as_bytes()), "carol": base64(CAROL_SHA.as_bytes())}
    }));
    fake.apply(auth_ingress("map", "map.example", "users", "auth-map"));
    fake.apply(auth_ingress("file", "file.example", "later", "auth-file"));
    let sluice = KubeSluice::start(kube_cli(&fake.url(), "sluice-0")).await;

    let reply = sluice.wait_status("map.example", "/", 401, LIMIT).await;
    assert_eq!(reply.headers["www-authenticate"], "Basic realm=\"team\"");
    assert_eq!(
        get_as(&sluice, "map.example", "bob", "hunter2")
            .await
            .status,
        200
    );
    assert_eq!(
        get_as(&sluice, "map.example", "carol", "pa:ss")
            .await
            .status,
        200
    );
    assert_eq!(
        get_as(&sluice, "map.example", "carol", "hunter2")
            .await
            .status,
        401
    );

    // The Secret does not exist yet: the location is denied.
    sluice.wait_status("file.example", "/", 503, LIMIT).await;
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "later", "namespace": "shop"},
        "type": "Opaque",
        "data": {"auth": base64(format!("bob:{BOB_APR1}\n").as_bytes())}
    }));
    sluice.wait_status("file.example", "/", 401, LIMIT).await;
    assert_eq!(
        get_as(&sluice, "file.example", "bob", "hunter2")
            .await
            .status,
        200
    );
    assert!(backend.hits() >= 3);
    sluice.shutdown().await;
}
