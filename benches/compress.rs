//! Decides whether streaming gzip with flate2 (pure-Rust backend) is fast enough to turn on
//! for the seed cluster's text, JSON, JavaScript and CSS (`gzip-level: 6`), compared with
//! nginx's zlib gzip on the same body (see benches/README.md for the nginx side). zstd at
//! level 3 (Sluice's `zstd-level` default) runs on the same body for comparison.
//!
//! Run: `cargo bench --bench compress`. Also writes the 1 MB body to
//! `target/compress-bench/body.json` so nginx can serve the very same bytes.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{Method, Response, Version};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use sluice::proxy::compress::{compress_response, ClientAccepts};
use sluice::settings::Settings;

const BODY_LEN: usize = 1_000_000;
/// Upstream frames of this size, as hyper hands them on from a socket.
const FRAME: usize = 16 * 1024;

/// A JSON array of varied records (pseudo-random but fixed), about 1 MB.
fn json_body() -> Vec<u8> {
    let mut out = String::from("[");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let words = [
        "ingress", "proxy", "sluice", "nginx", "backend", "service", "cluster", "gateway",
        "request", "response", "header", "route",
    ];
    let mut i = 0u64;
    while out.len() < BODY_LEN - 200 {
        let r = next();
        out.push_str(&format!(
            "{{\"id\":{i},\"name\":\"{}-{}\",\"score\":{}.{},\"active\":{},\"tags\":[\"{}\",\"{}\"],\"ts\":\"2026-11-{:02}T{:02}:{:02}:{:02}Z\"}},",
            words[(r % 12) as usize],
            r % 100_000,
            r % 1000,
            (r >> 10) % 100,
            r % 3 == 0,
            words[((r >> 4) % 12) as usize],
            words[((r >> 8) % 12) as usize],
            1 + (r >> 12) % 28,
            (r >> 16) % 24,
            (r >> 20) % 60,
            (r >> 24) % 60,
        ));
        i += 1;
    }
    out.pop();
    out.push(']');
    while out.len() < BODY_LEN {
        out.push(' ');
    }
    out.into_bytes()
}

fn bench_compress(c: &mut Criterion) {
    let body = Bytes::from(json_body());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/compress-bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("body.json"), &body);

    let settings = Settings {
        use_gzip: true,
        gzip_level: 6,
        ..Settings::default()
    };
    let mut group = c.benchmark_group("compress");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.measurement_time(Duration::from_secs(10));
    bench_encoding(&mut group, &body, &settings, "gzip", "gzip_level6_1mb_json");
    let settings = Settings {
        enable_zstd: true,
        zstd_level: 3,
        ..Settings::default()
    };
    bench_encoding(&mut group, &body, &settings, "zstd", "zstd_level3_1mb_json");
    group.finish();
}

/// Compress `body` through [`compress_response`] as `token` (the Accept-Encoding the client
/// sends and the Content-Encoding expected), streamed in upstream-sized frames.
fn bench_encoding(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    body: &Bytes,
    settings: &Settings,
    token: &str,
    name: &str,
) {
    let mut headers = http::HeaderMap::new();
    headers.insert("accept-encoding", token.parse().unwrap());
    let accepts = ClientAccepts::from_request(settings, &Method::GET, Version::HTTP_11, &headers);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let compress = |body: &Bytes| {
        let frames: Vec<Result<Frame<Bytes>, sluice::proxy::body::BoxError>> = (0..body.len())
            .step_by(FRAME)
            .map(|at| Ok(Frame::data(body.slice(at..(at + FRAME).min(body.len())))))
            .collect();
        let upstream = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let response = Response::builder()
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(upstream)
            .unwrap();
        let response = compress_response(settings, &accepts, response);
        assert_eq!(response.headers()["content-encoding"], token);
        runtime
            .block_on(response.into_body().collect())
            .unwrap()
            .to_bytes()
    };
    let compressed = compress(body);
    eprintln!(
        "1 MB JSON -> {} bytes {name} (ratio {:.2})",
        compressed.len(),
        body.len() as f64 / compressed.len() as f64
    );
    group.bench_function(name, |b| b.iter(|| black_box(compress(black_box(body)))));
}

criterion_group!(benches, bench_compress);
criterion_main!(benches);
