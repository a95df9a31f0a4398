//! Certificate metrics as ingress-nginx exports them, scraped from the admin port's /metrics in
//! standalone mode: `nginx_ingress_controller_ssl_expire_time_seconds` and
//! `nginx_ingress_controller_ssl_certificate_info`, one series per served host, with the labels
//! namespace, class, host, secret_name, identifier (plus issuer_organization,
//! issuer_common_name, serial_number and public_key_algorithm on the info series).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use support::*;

const NS: &str = "shop";

/// A CA (`O=Sluice Tests, CN=Metrics CA`) and a leaf it signs for `hosts` with `serial`,
/// valid until 2030-01-01T00:00:00Z. Returns (leaf PEM + CA PEM, key PEM).
fn certificate(hosts: &[&str], serial: u64) -> (String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Sluice Tests");
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Metrics CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let mut params =
        rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hosts[0]);
    params.serial_number = Some(serial.into());
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2030, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = params.signed_by(&key, &issuer).unwrap();
    (
        format!("{}{}", leaf.pem(), ca_cert.pem()),
        key.serialize_pem(),
    )
}

const EXPIRES_2030: &str = "1893456000";

fn tls_secret(name: &str, (cert, key): &(String, String)) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {NS}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n---\n",
        base64(cert.as_bytes()),
        base64(key.as_bytes())
    )
}

/// An Ingress serving `hosts` with TLS from `secret`.
fn tls_ingress(name: &str, hosts: &[&str], secret: &str) -> String {
    let list = hosts.join(", ");
    let mut out = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  ingressClassName: nginx\n  tls:\n  - hosts: [{list}]\n    secretName: {secret}\n  rules:\n"
    );
    for host in hosts {
        out.push_str(&format!(
            "  - host: {host}\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n"
        ));
    }
    out.push_str("---\n");
    out
}

/// GET /metrics on the admin port.
async fn scrape(addr: SocketAddr) -> String {
    let reply = send(
        addr,
        http::Request::get("/metrics")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    reply.text()
}

/// The series of `metric`: labels -> value, without the constant `controller_*` labels every
/// controller metric carries (checked to be present).
fn series(text: &str, metric: &str) -> Vec<(BTreeMap<String, String>, String)> {
    raw_series(text, metric)
        .into_iter()
        .map(|(mut labels, value)| {
            for constant in ["controller_class", "controller_namespace", "controller_pod"] {
                assert!(
                    labels.remove(constant).is_some(),
                    "{metric}: no {constant} label"
                );
            }
            (labels, value)
        })
        .collect()
}

fn raw_series(text: &str, metric: &str) -> Vec<(BTreeMap<String, String>, String)> {
    let prefix = format!("{metric}{{");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| {
            let (labels, value) = rest.rsplit_once("} ").expect("labels then value");
            let mut map = BTreeMap::new();
            // Values here contain no `",` sequence.
            for pair in labels.split("\",") {
                let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
            (map, value.trim().to_string())
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_metrics_have_ingress_nginx_labels() {
    let backend = Backend::start("web").await;
    let cert = certificate(&["a.shop.test", "b.shop.test"], 4660);
    let files = [(
        "all.yaml",
        ingress_class()
            + &service(NS, "web", 80, &[backend.addr])
            + &tls_secret("shop-tls", &cert)
            + &tls_ingress("web", &["a.shop.test", "b.shop.test"], "shop-tls"),
    )];
    let sluice = Sluice::start(&files, |_| {}).await;
    let metrics_addr = sluice.running.as_ref().unwrap().metrics_addr;
    let text = scrape(metrics_addr).await;

    let expire = series(&text, "nginx_ingress_controller_ssl_expire_time_seconds");
    let info = series(&text, "nginx_ingress_controller_ssl_certificate_info");
    assert_eq!(expire.len(), 2, "one series per host: {expire:?}");
    assert_eq!(info.len(), 2, "one series per host: {info:?}");
    for host in ["a.shop.test", "b.shop.test"] {
        let base = [
            ("namespace", NS),
            ("class", "nginx"),
            ("host", host),
            ("secret_name", "shop-tls"),
            ("identifier", "shop/shop-tls-4660"),
        ];
        assert!(
            expire.contains(&(labels(&base), EXPIRES_2030.to_string())),
            "{host}: {expire:?}"
        );
        let mut all = base.to_vec();
        all.extend([
            ("issuer_organization", "Sluice Tests"),
            ("issuer_common_name", "Metrics CA"),
            ("serial_number", "4660"),
            ("public_key_algorithm", "ECDSA"),
        ]);
        assert!(
            info.contains(&(labels(&all), "1".to_string())),
            "{host}: {info:?}"
        );
    }
    // The HELP and TYPE lines are those of ingress-nginx.
    assert!(
        text.contains("# TYPE nginx_ingress_controller_ssl_expire_time_seconds gauge"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE nginx_ingress_controller_ssl_certificate_info gauge"),
        "{text}"
    );

    // A renewed certificate replaces the series; a host that loses TLS loses its series.
    let renewed = certificate(&["a.shop.test"], 4661);
    sluice
        .write(
            "all.yaml",
            &(ingress_class()
                + &service(NS, "web", 80, &[backend.addr])
                + &tls_secret("shop-tls", &renewed)
                + &tls_ingress("web", &["a.shop.test"], "shop-tls")),
        )
        .await;
    let text = scrape(metrics_addr).await;
    let info = series(&text, "nginx_ingress_controller_ssl_certificate_info");
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0].0["host"], "a.shop.test");
    assert_eq!(info[0].0["serial_number"], "4661");
    assert_eq!(info[0].0["identifier"], "shop/shop-tls-4661");
    let expire = series(&text, "nginx_ingress_controller_ssl_expire_time_seconds");
    assert_eq!(expire.len(), 1, "{expire:?}");
    sluice.shutdown().await;
}
