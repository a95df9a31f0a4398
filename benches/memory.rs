//! Informs: whether the store plus one snapshot fit the memory target for a large cluster
//! (issue 4: 5 000 Ingresses, 5 000 Services, 20 000 EndpointSlices, 2 000 TLS Secrets under
//! 150 MB), and where the memory goes. Prints resident-set numbers from /proc/self/status;
//! not a criterion bench (memory, not time). Run: `cargo bench --bench memory`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec,
    IngressRule, IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use sluice::store::{Object, Store, StoreEvent};
use sluice::translate::{translate, TranslateOptions};

const INGRESSES: usize = 5_000;
const SLICES_PER_SERVICE: usize = 4;
const TLS_SECRETS: usize = 2_000;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        // What a typical object carries after trimming: a few labels.
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), name.to_string()),
            ("app.kubernetes.io/part-of".to_string(), "shop".to_string()),
        ])),
        resource_version: Some("123456789".into()),
        uid: Some("7b0c3b9e-0b8a-4c9e-9f2a-2f6c1d2e3f4a".into()),
        ..Default::default()
    }
}

fn objects() -> Vec<(Object, Option<Arc<str>>)> {
    let mut out = Vec::new();
    out.push((
        Object::IngressClass(Arc::new(IngressClass {
            metadata: ObjectMeta {
                name: Some("nginx".into()),
                ..Default::default()
            },
            spec: Some(IngressClassSpec {
                controller: Some("k8s.io/ingress-nginx".into()),
                parameters: None,
            }),
        })),
        None,
    ));
    // One CA-signed-looking certificate per TLS Secret (self-signed ECDSA leaves).
    for i in 0..INGRESSES {
        let ns = format!("team-{}", i % 50);
        let name = format!("app-{i}");
        let host = format!("app-{i}.example.com");
        let path = |p: &str| HTTPIngressPath {
            path: Some(p.into()),
            path_type: "Prefix".into(),
            backend: IngressBackend {
                service: Some(IngressServiceBackend {
                    name: name.clone(),
                    port: Some(ServiceBackendPort {
                        name: None,
                        number: Some(80),
                    }),
                }),
                resource: None,
            },
        };
        let tls = (i < TLS_SECRETS).then(|| {
            vec![IngressTLS {
                hosts: Some(vec![host.clone()]),
                secret_name: Some(format!("{name}-tls")),
            }]
        });
        out.push((
            Object::Ingress(Arc::new(Ingress {
                metadata: meta(&ns, &name),
                spec: Some(IngressSpec {
                    ingress_class_name: Some("nginx".into()),
                    rules: Some(vec![IngressRule {
                        host: Some(host.clone()),
                        http: Some(HTTPIngressRuleValue {
                            paths: vec![path("/"), path("/api")],
                        }),
                    }]),
                    tls,
                    default_backend: None,
                }),
                status: None,
            })),
            None,
        ));
        out.push((
            Object::Service(Arc::new(Service {
                metadata: meta(&ns, &name),
                spec: Some(ServiceSpec {
                    ports: Some(vec![ServicePort {
                        name: Some("http".into()),
                        port: 80,
                        ..Default::default()
                    }]),
                    cluster_ip: Some(format!("10.96.{}.{}", i / 250, i % 250)),
                    type_: Some("ClusterIP".into()),
                    ..Default::default()
                }),
                status: None,
            })),
            None,
        ));
        for s in 0..SLICES_PER_SERVICE {
            let mut slice_meta = meta(&ns, &format!("{name}-{s}"));
            slice_meta
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert("kubernetes.io/service-name".into(), name.clone());
            out.push((
                Object::EndpointSlice(Arc::new(EndpointSlice {
                    metadata: slice_meta,
                    address_type: "IPv4".into(),
                    endpoints: (0..3)
                        .map(|e| Endpoint {
                            addresses: vec![format!(
                                "10.{}.{}.{}",
                                s,
                                (i * 3 + e) / 250 % 250,
                                (i * 3 + e) % 250
                            )],
                            conditions: Some(EndpointConditions {
                                ready: Some(true),
                                serving: Some(true),
                                terminating: Some(false),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                    ports: Some(vec![EndpointPort {
                        name: Some("http".into()),
                        port: Some(8080),
                        protocol: Some("TCP".into()),
                        app_protocol: None,
                    }]),
                })),
                None,
            ));
        }
    }
    for i in 0..TLS_SECRETS {
        let ns = format!("team-{}", i % 50);
        let name = format!("app-{i}-tls");
        let cert = rcgen::generate_simple_self_signed(vec![format!("app-{i}.example.com")])
            .expect("certificate");
        let mut data = BTreeMap::new();
        data.insert(
            "tls.crt".to_string(),
            ByteString(cert.cert.pem().into_bytes()),
        );
        data.insert(
            "tls.key".to_string(),
            ByteString(cert.signing_key.serialize_pem().into_bytes()),
        );
        out.push((
            Object::Secret(Arc::new(Secret {
                metadata: meta(&ns, &name),
                type_: Some("kubernetes.io/tls".into()),
                data: Some(data),
                ..Default::default()
            })),
            None,
        ));
    }
    out
}

fn main() {
    // `cargo test --benches` runs bench targets with --bench absent: keep that cheap.
    if !std::env::args().any(|a| a == "--bench") {
        println!("memory bench: run with `cargo bench --bench memory`");
        return;
    }
    let base = status_kib("VmRSS:");
    let objects = objects();
    let mut store = Store::default();
    store.apply(StoreEvent::Replace(objects));
    let after_store = status_kib("VmRSS:");
    let options = TranslateOptions {
        ingress_class: "nginx".into(),
        controller_class: "k8s.io/ingress-nginx".into(),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let translation = translate(&store, &options);
    let took = started.elapsed();
    let after_snapshot = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    assert!(
        translation.diagnostics.is_empty(),
        "{:?}",
        &translation.diagnostics[..3.min(translation.diagnostics.len())]
    );
    println!(
        "objects: {} Ingresses, {} Services, {} EndpointSlices, {} TLS Secrets",
        store.ingresses.len(),
        store.services.len(),
        store.endpoint_slices.len(),
        store.secrets.len()
    );
    println!(
        "store:    {:>7.1} MiB resident",
        (after_store - base) as f64 / 1024.0
    );
    println!(
        "snapshot: {:>7.1} MiB resident (translated in {took:?})",
        (after_snapshot - after_store) as f64 / 1024.0
    );
    println!(
        "total:    {:>7.1} MiB above the empty process, peak RSS {:.1} MiB (target: under 150 MB)",
        (after_snapshot - base) as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    drop(translation);
}
