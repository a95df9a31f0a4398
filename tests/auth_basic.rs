//! Basic authentication over real sockets (reference §3f, in the spirit of ingress-nginx's
//! test/e2e/annotations/auth.go): `auth-type: basic` with `auth-file` and `auth-map` Secrets,
//! every htpasswd hash format, the 401 and its challenge, the `Authorization` header kept from
//! the upstream, and the 503 of a location whose auth Secret is missing or malformed.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

// Real hashes, made once with (password after the user):
//   htpasswd -nbB -C 5 alice 's3cret'
//   htpasswd -nbm bob hunter2
//   htpasswd -nbs carol 'pa:ss'
//   openssl passwd -1 -salt Qz9mJ1pX 'd4ve!'
//   htpasswd -nbd erin bar                       (DES crypt, as ingress-nginx's e2e uses)
//   openssl passwd -6 -salt salt s3cret          (SHA-512 crypt)
const ERIN_DES: &str = "fLugOTI4zqaGU";
const FRANK_SHA512: &str = "$6$salt$DGAQW8l.nT4RCbPNEQZjx6ZZzjHy2eW5krORahM6YQzUbUKsZPuhNkX7AUpx1TMPuF37mzmXtWWdUw3tTKEd.1";
const ALICE_BCRYPT: &str = "$2y$05$f4dmHKVdnPqvvrzvRaFXVuJ5Q307h2KuyiH9Wc9Utmkrd5DWnao0i";
const BOB_APR1: &str = "$apr1$AT/ycPUn$MpXF9Ef8RmoeFvJtRoViM.";
const CAROL_SHA: &str = "{SHA}XyRLaTIb/WCdo8CuWc58gPVHl68=";
const DAVE_MD5: &str = "$1$Qz9mJ1pX$OFNlsIjPjLU4tlv7d0fPL0";

fn htpasswd_file() -> String {
    format!(
        "# team\nalice:{ALICE_BCRYPT}\nbob:{BOB_APR1}\ncarol:{CAROL_SHA}\ndave:{DAVE_MD5}\n\
         erin:{ERIN_DES}\nfrank:{FRANK_SHA512}\n"
    )
}

/// A Secret `shop/<name>` with `data` (values base64-encoded here).
fn secret(name: &str, data: &[(&str, &str)]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: shop\ntype: Opaque\ndata:\n"
    );
    for (k, v) in data {
        out.push_str(&format!("  {k}: {}\n", base64(v.as_bytes())));
    }
    out.push_str("---\n");
    out
}

fn web_ingress(name: &str, host: &str, paths: &[&str], annotations: &[(&str, &str)]) -> String {
    let paths: Vec<(&str, &str, &str, u16)> =
        paths.iter().map(|p| (*p, "Prefix", "web", 80)).collect();
    with_annotations(ingress("shop", name, host, &paths), annotations)
}

async fn start(backend: SocketAddr, objects: &[String], config: &[(&str, &str)]) -> Sluice {
    let mut manifests = ingress_class() + &service("shop", "web", 80, &[backend]);
    for o in objects {
        manifests += o;
    }
    if !config.is_empty() {
        manifests += "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sluice\n  namespace: ingress\ndata:\n";
        for (k, v) in config {
            manifests += &format!("  {k}: {}\n", serde_json::to_string(v).unwrap());
        }
        manifests += "---\n";
    }
    let with_configmap = !config.is_empty();
    Sluice::start(&[("all.yaml", manifests)], |cli| {
        if with_configmap {
            cli.configmap = Some("ingress/sluice".parse().unwrap());
        }
    })
    .await
}

async fn get_as(sluice: &Sluice, host: &str, path: &str, user: &str, password: &str) -> Reply {
    let credentials = base64(format!("{user}:{password}").as_bytes());
    send(
        sluice.http,
        Request::get(path)
            .header("host", host)
            .header("authorization", format!("Basic {credentials}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

const PAGE_401: &str = "<html>\r\n<head><title>401 Authorization Required</title></head>\r\n<body>\r\n<center><h1>401 Authorization Required</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

#[tokio::test]
async fn auth_file_users_with_every_hash_format() {
    let backend = Backend::start("web").await;
    let sluice = start(
        backend.addr,
        &[
            secret("basic-auth", &[("auth", &htpasswd_file())]),
            web_ingress(
                "app",
                "auth.example.com",
                &["/"],
                &[
                    ("auth-type", "basic"),
                    ("auth-secret", "basic-auth"),
                    ("auth-realm", "test auth"),
                ],
            ),
        ],
        &[],
    )
    .await;

    // No credentials: nginx's 401 page and the challenge, nothing reaches the upstream.
    let reply = sluice.get("auth.example.com", "/").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.headers["www-authenticate"],
        "Basic realm=\"test auth\""
    );
    assert_eq!(reply.text(), PAGE_401);
    assert_eq!(backend.hits(), 0);

    for (user, password) in [
        ("alice", "s3cret"),
        ("bob", "hunter2"),
        ("carol", "pa:ss"),
        ("dave", "d4ve!"),
        ("erin", "bar"),
        ("frank", "s3cret"),
    ] {
        let reply = get_as(&sluice, "auth.example.com", "/private?x=1", user, password).await;
        assert_eq!(reply.status, StatusCode::OK, "{user}: {}", reply.text());
        let seen = backend.last();
        assert_eq!(seen.uri, "/private?x=1");
        assert!(
            !seen.headers.contains_key("authorization"),
            "{user}: the credentials must not reach the upstream"
        );
    }
    let hits = backend.hits();

    for (user, password) in [
        ("alice", "S3cret"),
        ("bob", "hunter"),
        ("carol", "pa"),
        ("dave", ""),
        ("erin", "baz"),
        ("frank", "s3cre"),
        ("grace", "s3cret"),
    ] {
        let reply = get_as(&sluice, "auth.example.com", "/", user, password).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{user}:{password}");
        assert_eq!(
            reply.headers["www-authenticate"],
            "Basic realm=\"test auth\""
        );
    }
    // Another scheme is not credentials.
    let reply = send(
        sluice.http,
        Request::get("/")
            .header("host", "auth.example.com")
            .header("authorization", "Bearer abc")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        backend.hits(),
        hits,
        "no refused request reached the upstream"
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn auth_map_secret_and_empty_realm() {
    let backend = Backend::start("web").await;
    let sluice = start(
        backend.addr,
        &[
            secret("users", &[("alice", ALICE_BCRYPT), ("bob", BOB_APR1)]),
            web_ingress(
                "app",
                "map.example.com",
                &["/"],
                &[
                    ("auth-type", "basic"),
                    ("auth-secret", "shop/users"),
                    ("auth-secret-type", "auth-map"),
                ],
            ),
        ],
        &[],
    )
    .await;
    let reply = sluice.get("map.example.com", "/").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.headers["www-authenticate"], "Basic realm=\"\"");
    let reply = get_as(&sluice, "map.example.com", "/", "bob", "hunter2").await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = get_as(&sluice, "map.example.com", "/", "alice", "s3cret").await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = get_as(&sluice, "map.example.com", "/", "alice", "hunter2").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    sluice.shutdown().await;
}

#[tokio::test]
async fn broken_auth_annotations_deny_with_503() {
    let backend = Backend::start("web").await;
    let basic = |secret: &'static str| vec![("auth-type", "basic"), ("auth-secret", secret)];
    let mut no_key = basic("no-auth-key");
    no_key.push(("auth-realm", "r"));
    let mut bad_type = basic("basic-auth");
    bad_type.push(("auth-secret-type", "auth-list"));
    let sluice = start(
        backend.addr,
        &[
            secret("basic-auth", &[("auth", &htpasswd_file())]),
            secret("no-auth-key", &[("users", &htpasswd_file())]),
            web_ingress("missing", "missing.example.com", &["/"], &basic("nope")),
            web_ingress("nokey", "nokey.example.com", &["/"], &no_key),
            web_ingress("badtype", "badtype.example.com", &["/"], &bad_type),
            web_ingress(
                "digest",
                "digest.example.com",
                &["/"],
                &[("auth-type", "digest"), ("auth-secret", "basic-auth")],
            ),
            web_ingress(
                "other-ns",
                "otherns.example.com",
                &["/"],
                &[
                    ("auth-type", "basic"),
                    ("auth-secret", "kube-system/basic-auth"),
                ],
            ),
            web_ingress("open", "open.example.com", &["/"], &[]),
        ],
        &[],
    )
    .await;
    for host in [
        "missing.example.com",
        "nokey.example.com",
        "badtype.example.com",
        "digest.example.com",
        "otherns.example.com",
    ] {
        let reply = get_as(&sluice, host, "/", "alice", "s3cret").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{host}");
        assert!(reply.text().contains("503 Service Temporarily Unavailable"));
    }
    assert_eq!(backend.hits(), 0);
    // The other Ingresses are unaffected.
    assert_eq!(
        sluice.get("open.example.com", "/").await.status,
        StatusCode::OK
    );
    sluice.shutdown().await;
}

#[tokio::test]
async fn no_auth_locations_are_exempt() {
    let backend = Backend::start("web").await;
    let sluice = start(
        backend.addr,
        &[
            secret("basic-auth", &[("auth", &htpasswd_file())]),
            web_ingress(
                "app",
                "auth.example.com",
                &["/", "/public"],
                &[("auth-type", "basic"), ("auth-secret", "basic-auth")],
            ),
        ],
        &[("no-auth-locations", "/public")],
    )
    .await;
    let reply = sluice.get("auth.example.com", "/public/page").await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = sluice.get("auth.example.com", "/private").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    sluice.shutdown().await;
}

/// ingress-nginx's e2e "invalid content": a user whose hash crypt() cannot check is a 500.
#[tokio::test]
async fn unusable_hash_is_a_500() {
    let backend = Backend::start("web").await;
    let sluice = start(
        backend.addr,
        &[
            secret("broken", &[("auth", "foo:\n")]),
            web_ingress(
                "app",
                "auth.example.com",
                &["/"],
                &[("auth-type", "basic"), ("auth-secret", "broken")],
            ),
        ],
        &[],
    )
    .await;
    let reply = get_as(&sluice, "auth.example.com", "/", "foo", "bar").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        sluice.get("auth.example.com", "/").await.status,
        StatusCode::UNAUTHORIZED
    );
    let reply = get_as(&sluice, "auth.example.com", "/", "other", "bar").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(backend.hits(), 0);
    sluice.shutdown().await;
}
