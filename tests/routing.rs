//! Routing end to end, over real sockets, exactly as ingress-nginx routes (reference §5e host
//! matching, §5f path matching and multi-Ingress merge, §6 IngressClass rules): every request
//! checks *which* backend answered.

mod support;

use std::net::SocketAddr;

use sluice::cli::Cli;
use support::*;

/// nginx's 404 page, byte for byte.
const NGINX_404: &str = "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// What a request should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// 200 from the named backend.
    By(&'static str),
    /// nginx's auto 301 to this path (+ query).
    Redirect(&'static str),
    /// The default backend's 404 page.
    NotFound,
    /// 503: nothing to send to.
    Unavailable,
}
use Want::*;

/// An Ingress, rendered to YAML.
#[derive(Default, Clone)]
struct Ing {
    namespace: &'static str,
    name: &'static str,
    class_name: Option<&'static str>,
    annotations: Vec<(&'static str, &'static str)>,
    created: Option<&'static str>,
    /// (service, port number or name)
    default_backend: Option<(&'static str, &'static str)>,
    /// (host, paths as (path, pathType, service, port number or name))
    rules: Vec<(&'static str, Vec<Path>)>,
}

type Path = (&'static str, &'static str, &'static str, &'static str);

impl Ing {
    /// An Ingress of class `nginx` in namespace `default`.
    fn new(name: &'static str) -> Ing {
        Ing {
            namespace: "default",
            name,
            class_name: Some("nginx"),
            ..Default::default()
        }
    }
    fn ns(mut self, namespace: &'static str) -> Ing {
        self.namespace = namespace;
        self
    }
    fn class(mut self, class: Option<&'static str>) -> Ing {
        self.class_name = class;
        self
    }
    fn annotation(mut self, key: &'static str, value: &'static str) -> Ing {
        self.annotations.push((key, value));
        self
    }
    fn created(mut self, timestamp: &'static str) -> Ing {
        self.created = Some(timestamp);
        self
    }
    fn default_backend(mut self, service: &'static str, port: &'static str) -> Ing {
        self.default_backend = Some((service, port));
        self
    }
    fn rule(mut self, host: &'static str, paths: &[Path]) -> Ing {
        self.rules.push((host, paths.to_vec()));
        self
    }
    fn yaml(&self) -> String {
        let mut out = format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {}\n  namespace: {}\n",
            self.name, self.namespace
        );
        if let Some(created) = self.created {
            out += &format!("  creationTimestamp: \"{created}\"\n");
        }
        if !self.annotations.is_empty() {
            out += "  annotations:\n";
            for (k, v) in &self.annotations {
                out += &format!("    {k}: \"{v}\"\n");
            }
        }
        out += "spec:\n";
        if let Some(class) = self.class_name {
            out += &format!("  ingressClassName: {class}\n");
        }
        if let Some((service, port)) = self.default_backend {
            out += &format!(
                "  defaultBackend:\n    service: {{name: {service}, port: {}}}\n",
                port_yaml(port)
            );
        }
        if !self.rules.is_empty() {
            out += "  rules:\n";
            for (host, paths) in &self.rules {
                out += "  - ";
                if !host.is_empty() {
                    out += &format!("host: \"{host}\"\n    ");
                }
                out += "http:\n      paths:\n";
                for (path, path_type, service, port) in paths {
                    out += &format!(
                        "      - path: {path}\n        pathType: {path_type}\n        backend:\n          service: {{name: {service}, port: {}}}\n",
                        port_yaml(port)
                    );
                }
            }
        }
        out + "---\n"
    }
}

fn port_yaml(port: &str) -> String {
    match port.parse::<u16>() {
        Ok(n) => format!("{{number: {n}}}"),
        Err(_) => format!("{{name: {port}}}"),
    }
}

/// Start one echo backend per name and a Service (port 80, named `http`) in `namespace` for
/// each, named like the backend.
async fn backends(namespace: &str, names: &[&str]) -> (Vec<Backend>, String) {
    let mut started = Vec::new();
    let mut yaml = String::new();
    for name in names {
        let b = Backend::start(name).await;
        yaml += &service(namespace, name, 80, &[b.addr]);
        started.push(b);
    }
    (started, yaml)
}

async fn check(sluice: &Sluice, host: &str, path: &str, want: Want) {
    let reply = sluice.get(host, path).await;
    let context = format!("GET {path} Host: {host}: {} {}", reply.status, reply.text());
    match want {
        By(name) => {
            assert_eq!(reply.status, 200, "{context}: want {name}");
            assert_eq!(reply.json()["backend"], name, "{context}");
            assert_eq!(reply.json()["uri"], path, "{context}: URI passed unchanged");
        }
        Redirect(to) => {
            assert_eq!(reply.status, 301, "{context}: want redirect to {to}");
            let location = reply.headers["location"].to_str().unwrap();
            let host_only = host.split(':').next().unwrap();
            assert!(
                location == to || location == format!("http://{host_only}{to}"),
                "{context}: Location {location}, want {to}"
            );
        }
        NotFound => {
            assert_eq!(reply.status, 404, "{context}: want the default 404");
            assert_eq!(reply.text(), NGINX_404, "{context}");
        }
        Unavailable => assert_eq!(reply.status, 503, "{context}: want 503"),
    }
}

async fn check_all(sluice: &Sluice, cases: &[(&str, &str, Want)]) {
    for (host, path, want) in cases {
        check(sluice, host, path, *want).await;
    }
}

async fn start(manifests: String, configure: impl FnOnce(&mut Cli)) -> Sluice {
    Sluice::start(&[("all.yaml", manifests)], configure).await
}

// ---------------------------------------------------------------------------------------
// §5f: path types

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_types_match_like_ingress_nginx() {
    let names = [
        "root",
        "exact",
        "prefix",
        "deep",
        "pinned",
        "slash",
        "impl",
        "impl-slash",
        "exact-slash",
        "dup-slash",
        "dup-impl",
        "dup2-slash",
        "dup2-exact",
    ];
    let (_b, services) = backends("default", &names).await;
    let h = "paths.test";
    let ing = Ing::new("paths").rule(
        h,
        &[
            ("/", "Prefix", "root", "80"),
            ("/exact", "Exact", "exact", "80"),
            ("/foo", "Prefix", "prefix", "80"),
            ("/foo/deep", "Prefix", "deep", "80"),
            ("/foo/deep/pinned", "Exact", "pinned", "80"),
            ("/slash/", "Prefix", "slash", "80"),
            ("/impl", "ImplementationSpecific", "impl", "80"),
            ("/impl-slash/", "ImplementationSpecific", "impl-slash", "80"),
            ("/exact-slash/", "Exact", "exact-slash", "80"),
            // `/dup/` would redirect `/dup`, but a location named `/dup` exists.
            ("/dup/", "Prefix", "dup-slash", "80"),
            ("/dup", "ImplementationSpecific", "dup-impl", "80"),
            ("/dup2/", "Prefix", "dup2-slash", "80"),
            ("/dup2", "Exact", "dup2-exact", "80"),
        ],
    );
    let sluice = start(ingress_class() + &services + &ing.yaml(), |_| {}).await;
    let table: &[(&str, Want)] = &[
        // Prefix `/`: everything not matched elsewhere.
        ("/", By("root")),
        ("/anything/else", By("root")),
        // Exact: exact and case-sensitive.
        ("/exact", By("exact")),
        ("/exact/", By("root")),
        ("/exactly", By("root")),
        ("/EXACT", By("root")),
        ("/exact?q=1", By("exact")),
        // Prefix `/foo`: element-wise.
        ("/foo", By("prefix")),
        ("/foo/", By("prefix")),
        ("/foo/bar", By("prefix")),
        ("/foo?x=y", By("prefix")),
        ("/foobar", By("root")),
        ("/Foo", By("root")),
        // Longest prefix wins; exact before any prefix.
        ("/foo/deep", By("deep")),
        ("/foo/deep/", By("deep")),
        ("/foo/deep/x", By("deep")),
        ("/foo/deeper", By("prefix")),
        ("/foo/deep/pinned", By("pinned")),
        ("/foo/deep/pinned/", By("deep")),
        ("/foo/deep/pinnedx", By("deep")),
        // Prefix with a trailing slash: `/slash` is not matched, nginx answers 301.
        ("/slash/", By("slash")),
        ("/slash/x", By("slash")),
        ("/slash", Redirect("/slash/")),
        ("/slash?q=1", Redirect("/slash/?q=1")),
        ("/slashes", By("root")),
        // ImplementationSpecific: nginx character prefix.
        ("/impl", By("impl")),
        ("/impl/", By("impl")),
        ("/implant", By("impl")),
        ("/impl-slash/", By("impl-slash")),
        ("/impl-slash/x", By("impl-slash")),
        ("/impl-slash", Redirect("/impl-slash/")),
        // Exact with a trailing slash: `location = /exact-slash/` also auto-redirects.
        ("/exact-slash/", By("exact-slash")),
        ("/exact-slash", Redirect("/exact-slash/")),
        ("/exact-slash/x", By("root")),
        // ... unless a location named exactly like the request exists.
        ("/dup", By("dup-impl")),
        ("/dupe", By("dup-impl")),
        ("/dup/", By("dup-slash")),
        ("/dup/x", By("dup-slash")),
        ("/dup2", By("dup2-exact")),
        ("/dup2/", By("dup2-slash")),
        // `/dup` (ImplementationSpecific) is a character prefix of `/dup2x`.
        ("/dup2x", By("dup-impl")),
    ];
    for (path, want) in table {
        check(&sluice, h, path, *want).await;
    }
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_without_root_falls_back_to_the_default_404() {
    let (_b, services) = backends("default", &["api"]).await;
    let ing = Ing::new("api").rule("api.test", &[("/api", "Prefix", "api", "80")]);
    let sluice = start(ingress_class() + &services + &ing.yaml(), |_| {}).await;
    check_all(
        &sluice,
        &[
            ("api.test", "/api/v1", By("api")),
            ("api.test", "/", NotFound),
            ("api.test", "/apiv1", NotFound),
            ("api.test", "/ap", NotFound),
        ],
    )
    .await;
    sluice.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// §5e: hosts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_exact_wildcard_case_port_and_catch_all() {
    let (_b, services) = backends("default", &["exact", "wild", "a-exact", "catch", "app"]).await;
    let manifests = ingress_class()
        + &services
        + &Ing::new("hosts")
            .rule("exact.test", &[("/", "Prefix", "exact", "80")])
            .rule("*.wild.test", &[("/", "Prefix", "wild", "80")])
            .rule("a.wild.test", &[("/", "Prefix", "a-exact", "80")])
            .rule("MiXeD.test", &[("/app", "Prefix", "app", "80")])
            .yaml()
        + &Ing::new("no-host")
            .rule("", &[("/", "Prefix", "catch", "80")])
            .yaml();
    let sluice = start(manifests, |_| {}).await;
    check_all(
        &sluice,
        &[
            ("exact.test", "/x", By("exact")),
            ("EXACT.Test", "/x", By("exact")),
            ("exact.test:8080", "/x", By("exact")),
            ("exact.test.", "/x", By("exact")),
            ("b.wild.test", "/x", By("wild")),
            ("B.WILD.test:81", "/x", By("wild")),
            ("under_score-1.wild.test", "/x", By("wild")),
            // An exact name beats the wildcard.
            ("a.wild.test", "/x", By("a-exact")),
            ("A.wild.test:9", "/x", By("a-exact")),
            // Exactly one label.
            ("a.b.wild.test", "/x", By("catch")),
            ("wild.test", "/x", By("catch")),
            // A host configured with upper case letters is matched in any case.
            ("mixed.test", "/app", By("app")),
            ("MIXED.TEST", "/app/1", By("app")),
            // A known host without a matching path goes to its implicit `/` (the default
            // backend), not to the rules without host.
            ("mixed.test", "/other", NotFound),
            // Rules without host answer every unknown host, and requests without Host.
            ("unknown.test", "/x", By("catch")),
            ("10.1.2.3:80", "/x", By("catch")),
            ("", "/x", By("catch")),
        ],
    )
    .await;
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_without_catch_all_is_nginx_404() {
    let (_b, services) = backends("default", &["wild"]).await;
    let manifests = ingress_class()
        + &services
        + &Ing::new("w")
            .rule("*.example.com", &[("/", "Prefix", "wild", "80")])
            .yaml();
    let sluice = start(manifests, |_| {}).await;
    check_all(
        &sluice,
        &[
            ("www.example.com", "/", By("wild")),
            ("example.com", "/", NotFound),
            ("a.b.example.com", "/", NotFound),
            ("other.test", "/", NotFound),
            ("other.test", "/deep/path?x=1", NotFound),
        ],
    )
    .await;
    let reply = sluice.get("other.test", "/").await;
    assert_eq!(reply.headers["content-type"], "text/html");
    sluice.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// §5f: merging several Ingresses

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_oldest_wins_other_types_kept_paths_merged() {
    let names = [
        "old",
        "new",
        "new-only",
        "exact-api",
        "web",
        "tie-b",
        "tie-a",
    ];
    let (_b, services) = backends("default", &names).await;
    let (_t, tie_services) = backends("a", &["ab"]).await;
    let (_u, tie_services2) = backends("a-x", &["axc"]).await;
    let (_v, none_services) = backends("default", &["zeta", "alpha"]).await;
    let h = "merge.test";
    // Files sort newest first, so file order is not what decides.
    let newer = Ing::new("newer")
        .created("2024-02-01T00:00:00Z")
        .rule(
            h,
            &[
                ("/api", "Prefix", "new", "80"),
                ("/new-only", "Prefix", "new-only", "80"),
            ],
        )
        .yaml();
    let older = Ing::new("older")
        .created("2024-01-01T00:00:00Z")
        .rule(
            h,
            &[
                ("/api", "Prefix", "old", "80"),
                ("/web", "Prefix", "web", "80"),
            ],
        )
        .yaml();
    let newest = Ing::new("other-type")
        .created("2024-03-01T00:00:00Z")
        .rule(h, &[("/api", "Exact", "exact-api", "80")])
        .yaml();
    // Equal timestamps: "namespace/name" compared as strings, descending wins.
    let ties = Ing::new("a")
        .created("2024-01-01T00:00:00Z")
        .rule("tie.test", &[("/", "Prefix", "tie-a", "80")])
        .yaml()
        + &Ing::new("b")
            .created("2024-01-01T00:00:00Z")
            .rule("tie.test", &[("/", "Prefix", "tie-b", "80")])
            .yaml()
        // "a/b" > "a-x/c" ('/' > '-') although namespace "a" < "a-x".
        + &Ing::new("b")
            .ns("a")
            .created("2024-05-01T00:00:00Z")
            .rule("tie2.test", &[("/", "Prefix", "ab", "80")])
            .yaml()
        + &Ing::new("c")
            .ns("a-x")
            .created("2024-05-01T00:00:00Z")
            .rule("tie2.test", &[("/", "Prefix", "axc", "80")])
            .yaml()
        // No timestamps at all: the same rule.
        + &Ing::new("alpha")
            .rule("none.test", &[("/", "Prefix", "alpha", "80")])
            .yaml()
        + &Ing::new("zeta")
            .rule("none.test", &[("/", "Prefix", "zeta", "80")])
            .yaml();
    let files = [
        ("0-newest.yaml", newest),
        ("1-newer.yaml", newer),
        ("2-older.yaml", older),
        ("3-ties.yaml", ties),
        (
            "4-services.yaml",
            ingress_class() + &services + &tie_services + &tie_services2 + &none_services,
        ),
    ];
    let sluice = Sluice::start(&files, |_| {}).await;
    check_all(
        &sluice,
        &[
            // Same host+path+pathType: the oldest Ingress wins.
            (h, "/api/v1", By("old")),
            (h, "/api/", By("old")),
            // Same path, other pathType: kept (`= /api` beats the prefix).
            (h, "/api", By("exact-api")),
            // Paths of all Ingresses served on the one host.
            (h, "/web", By("web")),
            (h, "/new-only/x", By("new-only")),
            (h, "/", NotFound),
            ("tie.test", "/", By("tie-b")),
            ("tie2.test", "/", By("ab")),
            ("none.test", "/", By("zeta")),
        ],
    )
    .await;

    // Removing the winner lets the next one serve the path.
    sluice.remove("2-older.yaml").await;
    check_all(
        &sluice,
        &[
            (h, "/api/v1", By("new")),
            (h, "/api", By("exact-api")),
            (h, "/web", NotFound),
        ],
    )
    .await;
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_root_and_default_backends() {
    let names = [
        "x-def",
        "x",
        "y-def",
        "y",
        "z",
        "catch-old",
        "catch-new",
        "global",
    ];
    let (_b, services) = backends("default", &names).await;
    let ingresses = [
        // The oldest Ingress of host d.test has its own defaultBackend: the implicit `/`.
        Ing::new("x")
            .created("2024-01-01T00:00:00Z")
            .default_backend("x-def", "80")
            .rule("d.test", &[("/x", "Prefix", "x", "80")]),
        Ing::new("y")
            .created("2024-02-01T00:00:00Z")
            .default_backend("y-def", "http")
            .rule("d.test", &[("/y", "Prefix", "y", "80")])
            .rule("y.test", &[("/y", "Prefix", "y", "80")]),
        // No defaultBackend: the global default backend.
        Ing::new("z").rule("e.test", &[("/z", "Prefix", "z", "80")]),
        // Only a defaultBackend: the catch-all server (the oldest such Ingress).
        Ing::new("catch-new")
            .created("2024-02-01T00:00:00Z")
            .default_backend("catch-new", "80"),
        Ing::new("catch-old")
            .created("2024-01-01T00:00:00Z")
            .default_backend("catch-old", "80"),
    ];
    let manifests = ingresses
        .iter()
        .fold(ingress_class() + &services, |acc, i| acc + &i.yaml());

    let expectations_common: &[(&str, &str, Want)] = &[
        ("d.test", "/x", By("x")),
        ("d.test", "/y/1", By("y")),
        ("d.test", "/", By("x-def")),
        ("d.test", "/other", By("x-def")),
        ("y.test", "/other", By("y-def")),
        ("e.test", "/z", By("z")),
        ("unknown.test", "/anything", By("catch-old")),
    ];

    // Without --default-backend-service: the built-in 404.
    let sluice = start(manifests.clone(), |_| {}).await;
    check_all(&sluice, expectations_common).await;
    check(&sluice, "e.test", "/other", NotFound).await;
    sluice.shutdown().await;

    // With --default-backend-service: it answers hosts' implicit `/`, but the Ingress with
    // only a defaultBackend still owns the catch-all server.
    let sluice = start(manifests, |cli| {
        cli.default_backend_service = Some("default/global".parse().unwrap())
    })
    .await;
    check_all(&sluice, expectations_common).await;
    check(&sluice, "e.test", "/other", By("global")).await;
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_backend_service_flag_answers_unknown_hosts() {
    let (_b, services) = backends("ingress-nginx", &["global"]).await;
    let (_c, app) = backends("default", &["app"]).await;
    let manifests = ingress_class()
        + &services
        + &app
        + &Ing::new("app")
            .rule("app.test", &[("/app", "Prefix", "app", "80")])
            .yaml();
    let sluice = start(manifests, |cli| {
        cli.default_backend_service = Some("ingress-nginx/global".parse().unwrap())
    })
    .await;
    check_all(
        &sluice,
        &[
            ("app.test", "/app", By("app")),
            ("app.test", "/", By("global")),
            ("unknown.test", "/x?y=1", By("global")),
        ],
    )
    .await;
    sluice.shutdown().await;

    // A --default-backend-service that does not exist: the built-in 404.
    let sluice = start(String::new(), |cli| {
        cli.default_backend_service = Some("ingress-nginx/missing".parse().unwrap())
    })
    .await;
    check(&sluice, "unknown.test", "/", NotFound).await;
    sluice.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// §6: IngressClass

/// The class matrix: each case is an Ingress on its own host `<case>.class.test`; `true` when
/// it must be served.
async fn class_matrix(configure: impl FnOnce(&mut Cli), expect: &[(&'static str, bool)]) {
    let (_b, services) = backends("default", &["ok"]).await;
    let route = |i: Ing, host: &'static str| i.rule(host, &[("/", "Prefix", "ok", "80")]);
    let ingresses = [
        route(Ing::new("ours"), "ours.class.test"),
        route(Ing::new("other").class(Some("traefik")), "other.class.test"),
        route(Ing::new("ghost").class(Some("ghost")), "ghost.class.test"),
        route(
            Ing::new("byname").class(Some("custom")),
            "byname.class.test",
        ),
        route(
            Ing::new("ann-nginx")
                .class(None)
                .annotation("kubernetes.io/ingress.class", "nginx"),
            "ann-nginx.class.test",
        ),
        route(
            Ing::new("ann-custom")
                .class(None)
                .annotation("kubernetes.io/ingress.class", "custom"),
            "ann-custom.class.test",
        ),
        route(Ing::new("none").class(None), "none.class.test"),
        // The annotation is not consulted when ingressClassName is set.
        route(
            Ing::new("ours-ann-other").annotation("kubernetes.io/ingress.class", "traefik"),
            "ours-ann-other.class.test",
        ),
        route(
            Ing::new("other-ann-nginx")
                .class(Some("traefik"))
                .annotation("kubernetes.io/ingress.class", "nginx"),
            "other-ann-nginx.class.test",
        ),
    ];
    let manifests = ingress_class()
        + &ingress_class_named("traefik", "traefik.io/ingress-controller")
        + &ingress_class_named("custom", "example.com/not-us")
        + &services
        + &ingresses.iter().map(Ing::yaml).collect::<String>();
    let sluice = start(manifests, configure).await;
    assert_eq!(
        expect.len(),
        ingresses.len(),
        "every case has an expectation"
    );
    for (case, served) in expect {
        let host = format!("{case}.class.test");
        let want = if *served { By("ok") } else { NotFound };
        check(&sluice, &host, "/", want).await;
    }
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_matrix_default_flags() {
    class_matrix(
        |_| {},
        &[
            ("ours", true),
            ("other", false),
            ("ghost", false),
            ("byname", false),
            ("ann-nginx", true),
            ("ann-custom", false),
            ("none", false),
            ("ours-ann-other", true),
            ("other-ann-nginx", false),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_matrix_watch_ingress_without_class() {
    class_matrix(
        |cli| cli.watch_ingress_without_class = true,
        &[
            ("ours", true),
            ("other", false),
            ("ghost", false),
            ("byname", false),
            ("ann-nginx", true),
            ("ann-custom", false),
            ("none", true),
            ("ours-ann-other", true),
            ("other-ann-nginx", false),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_matrix_other_ingress_class_value() {
    // --ingress-class=custom: the annotation must say `custom`; classes are still found by
    // controller, so the IngressClass `custom` (another controller) is not ours.
    class_matrix(
        |cli| cli.ingress_class = "custom".into(),
        &[
            ("ours", true),
            ("other", false),
            ("ghost", false),
            ("byname", false),
            ("ann-nginx", false),
            ("ann-custom", true),
            ("none", false),
            ("ours-ann-other", true),
            ("other-ann-nginx", false),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_matrix_ingress_class_by_name() {
    // --ingress-class-by-name: the IngressClass named --ingress-class is ours whatever its
    // controller.
    class_matrix(
        |cli| {
            cli.ingress_class = "custom".into();
            cli.ingress_class_by_name = true;
        },
        &[
            ("ours", true),
            ("other", false),
            ("ghost", false),
            ("byname", true),
            ("ann-nginx", false),
            ("ann-custom", true),
            ("none", false),
            ("ours-ann-other", true),
            ("other-ann-nginx", false),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Services and endpoints

fn slice(
    namespace: &str,
    service: &str,
    name: &str,
    ports: &[(&str, u16)],
    endpoints: &[(&str, Option<bool>)],
) -> String {
    let mut out = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n"
    );
    for (port_name, port) in ports {
        out += &format!("- name: {port_name}\n  port: {port}\n  protocol: TCP\n");
    }
    out += "endpoints:\n";
    for (address, ready) in endpoints {
        out += &format!("- addresses: [\"{address}\"]\n");
        if let Some(ready) = ready {
            out += &format!("  conditions: {{ready: {ready}}}\n");
        }
    }
    out + "---\n"
}

fn bare_service(namespace: &str, name: &str, ports: &[(&str, u16)]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  ports:\n"
    );
    for (port_name, port) in ports {
        out += &format!("  - name: {port_name}\n    port: {port}\n");
    }
    out + "---\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_backends_answer_503() {
    let ready = Backend::start("ready").await;
    let not_ready = Backend::start("not-ready").await;
    let port = |b: &Backend| b.addr.port();
    let manifests = ingress_class()
        // A Service without any EndpointSlice.
        + &bare_service("default", "no-slices", &[("http", 80)])
        // A slice whose only endpoint is not ready.
        + &bare_service("default", "not-ready", &[("http", 80)])
        + &slice("default", "not-ready", "not-ready-1", &[("http", port(&not_ready))], &[("127.0.0.1", Some(false))])
        // `ready` unset means ready.
        + &bare_service("default", "unknown-ready", &[("http", 80)])
        + &slice("default", "unknown-ready", "unknown-ready-1", &[("http", port(&ready))], &[("127.0.0.1", None)])
        // An ExternalName that resolves to loopback is refused.
        + "apiVersion: v1\nkind: Service\nmetadata:\n  name: loop\n  namespace: default\nspec:\n  type: ExternalName\n  externalName: localhost\n  ports:\n  - name: http\n    port: 80\n---\n"
        + &Ing::new("svc")
            .rule(
                "svc.test",
                &[
                    ("/no-slices", "Prefix", "no-slices", "80"),
                    ("/not-ready", "Prefix", "not-ready", "80"),
                    ("/unknown-ready", "Prefix", "unknown-ready", "80"),
                    ("/missing", "Prefix", "does-not-exist", "80"),
                    ("/wrong-port", "Prefix", "unknown-ready", "81"),
                    ("/wrong-port-name", "Prefix", "unknown-ready", "grpc"),
                    ("/loop", "Prefix", "loop", "80"),
                ],
            )
            .yaml();
    let sluice = start(manifests, |_| {}).await;
    check_all(
        &sluice,
        &[
            ("svc.test", "/no-slices", Unavailable),
            ("svc.test", "/not-ready", Unavailable),
            ("svc.test", "/unknown-ready", By("ready")),
            ("svc.test", "/missing/x", Unavailable),
            ("svc.test", "/wrong-port", Unavailable),
            ("svc.test", "/wrong-port-name", Unavailable),
            ("svc.test", "/loop", Unavailable),
        ],
    )
    .await;
    assert_eq!(not_ready.hits(), 0, "a not-ready endpoint got traffic");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_ports_are_matched_by_name() {
    let web = Backend::start("web-port").await;
    let admin = Backend::start("admin-port").await;
    // Slice ports listed in another order than the Service's: matched by name, not position.
    let manifests = ingress_class()
        + &bare_service("default", "multi", &[("http", 80), ("admin", 9000)])
        + &slice(
            "default",
            "multi",
            "multi-1",
            &[("admin", admin.addr.port()), ("http", web.addr.port())],
            &[("127.0.0.1", Some(true))],
        )
        + &Ing::new("ports")
            .rule(
                "ports.test",
                &[
                    ("/by-name-admin", "Prefix", "multi", "admin"),
                    ("/by-name-http", "Prefix", "multi", "http"),
                    ("/by-number-admin", "Prefix", "multi", "9000"),
                    ("/by-number-http", "Prefix", "multi", "80"),
                ],
            )
            .yaml();
    let sluice = start(manifests, |_| {}).await;
    check_all(
        &sluice,
        &[
            ("ports.test", "/by-name-admin", By("admin-port")),
            ("ports.test", "/by-name-http", By("web-port")),
            ("ports.test", "/by-number-admin", By("admin-port")),
            ("ports.test", "/by-number-http", By("web-port")),
        ],
    )
    .await;
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_across_endpoint_slices() {
    let pods = [
        Backend::start("pod-a").await,
        Backend::start("pod-b").await,
        Backend::start("pod-c").await,
    ];
    let drained = Backend::start("drained").await;
    let addrs: Vec<SocketAddr> = pods.iter().map(|b| b.addr).collect();
    // One slice per pod (support::service), plus a slice with a not-ready pod.
    let manifests = ingress_class()
        + &service("default", "rr", 80, &addrs)
        + &slice(
            "default",
            "rr",
            "rr-draining",
            &[("http", drained.addr.port())],
            &[("127.0.0.1", Some(false))],
        )
        + &Ing::new("rr")
            .rule("rr.test", &[("/", "Prefix", "rr", "80")])
            .yaml();
    let sluice = start(manifests, |_| {}).await;
    let mut order = Vec::new();
    for _ in 0..9 {
        let reply = sluice.get("rr.test", "/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        order.push(reply.json()["backend"].as_str().unwrap().to_string());
    }
    for pod in &pods {
        assert_eq!(pod.hits(), 3, "{} in {order:?}", pod.name);
    }
    // Strict rotation: no pod twice in a row.
    for pair in order.windows(2) {
        assert_ne!(pair[0], pair[1], "{order:?}");
    }
    assert_eq!(drained.hits(), 0);
    sluice.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Invalid objects

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_objects_are_skipped_everything_else_serves() {
    let (_b, services) = backends("default", &["good", "partly", "other"]).await;
    let files = [
        (
            "good.yaml",
            ingress_class()
                + &services
                + &Ing::new("good")
                    .rule("good.test", &[("/", "Prefix", "good", "80")])
                    .yaml(),
        ),
        // Unknown pathType: that path is skipped, the valid one serves.
        (
            "pathtype.yaml",
            Ing::new("pathtype")
                .rule(
                    "partly.test",
                    &[
                        ("/regex", "Regex", "partly", "80"),
                        ("/fine", "Prefix", "partly", "80"),
                    ],
                )
                .yaml(),
        ),
        // Host `*` is invalid: the rule is skipped (it must not catch every host).
        (
            "star.yaml",
            Ing::new("star")
                .rule("*", &[("/", "Prefix", "other", "80")])
                .rule("star-ok.test", &[("/", "Prefix", "other", "80")])
                .yaml(),
        ),
        // Not YAML at all.
        (
            "broken.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: broken\n  spec: [unclosed\n"
                .to_string(),
        ),
        // YAML, but not an Ingress.
        (
            "undecodable.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: undecodable}\nspec:\n  ingressClassName: nginx\n  rules: 42\n"
                .to_string(),
        ),
    ];
    let sluice = Sluice::start(&files, |_| {}).await;
    check_all(
        &sluice,
        &[
            ("good.test", "/", By("good")),
            ("partly.test", "/fine", By("partly")),
            ("partly.test", "/regex", NotFound),
            ("star-ok.test", "/", By("other")),
            ("anything.test", "/", NotFound),
        ],
    )
    .await;
    sluice.shutdown().await;
}
