//! Access log: one line per request in ingress-nginx's default `log-format-upstream`, or JSON.
//! Lines are handed to a writer task through a bounded queue, so a slow stdout never stalls
//! traffic; when the queue is full the line is dropped and counted.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::uri::PathAndQuery;
use http::{HeaderValue, Method};
use tokio::sync::mpsc;

use crate::snapshot::Backend;

/// Queue length between the request path and the writer.
const QUEUE: usize = 16 * 1024;

/// What one request leaves in the log; empty or `None` values are logged as `-`. Built on
/// the request path, so it holds shared handles (header values and the URI share the
/// request's buffers, labels are the route's `Arc<str>`) rather than copied strings.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub remote_addr: IpAddr,
    pub time: SystemTime,
    pub method: Method,
    pub uri: PathAndQuery,
    pub version: &'static str,
    pub status: u16,
    pub body_bytes_sent: u64,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub request_length: u64,
    pub request_time: Duration,
    /// The upstream (`$proxy_upstream_name` is its name).
    pub upstream: Option<Arc<Backend>>,
    /// `$proxy_alternative_upstream_name`: the canary upstream that served the request.
    pub alternative_upstream: Option<Arc<str>>,
    pub upstream_addr: Option<SocketAddr>,
    pub upstream_response_length: Option<u64>,
    pub upstream_response_time: Option<Duration>,
    pub upstream_status: Option<u16>,
    pub request_id: HeaderValue,
    pub namespace: Arc<str>,
    pub ingress: Arc<str>,
    pub service: Arc<str>,
    /// `log-format-escape-json` at the time of the request.
    pub escape_json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// ingress-nginx's default log-format-upstream.
    Upstream,
    Json,
}

/// The sending side, shared by all connections.
#[derive(Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<AccessRecord>,
    /// Lines dropped because the queue was full (`sluice_access_log_dropped_total`).
    pub dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Start the writer task on `out` (stdout in production).
    pub fn start<W: std::io::Write + Send + 'static>(format: Format, out: W) -> AccessLog {
        let (tx, mut rx) = mpsc::channel::<AccessRecord>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
                let mut line = String::with_capacity(512);
                while let Some(record) = rx.blocking_recv() {
                    let mut next = Some(record);
                    // Drain what is queued, then flush once.
                    while let Some(record) = next {
                        line.clear();
                        match format {
                            Format::Upstream => {
                                render_upstream(&record, record.escape_json, &mut line)
                            }
                            Format::Json => render_json(&record, &mut line),
                        }
                        line.push('\n');
                        if out.write_all(line.as_bytes()).is_err() {
                            return;
                        }
                        next = rx.try_recv().ok();
                    }
                    if out.flush().is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the access log thread");
        AccessLog {
            tx,
            dropped: Arc::default(),
        }
    }

    /// Records queued and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Queue a record; never waits.
    pub fn log(&self, record: AccessRecord) {
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// nginx's escaping for log variables: `"`, `\` and bytes outside printable ASCII as `\xHH`.
fn push_escaped(out: &mut String, value: &[u8]) {
    if value.is_empty() {
        out.push('-');
        return;
    }
    for &b in value {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b as char);
        }
    }
}

fn push_json_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

fn push_var(out: &mut String, value: &[u8], escape_json: bool) {
    if escape_json {
        if value.is_empty() {
            out.push('-');
        } else {
            push_json_escaped(out, &String::from_utf8_lossy(value));
        }
    } else {
        push_escaped(out, value);
    }
}

fn header_bytes(value: &Option<HeaderValue>) -> &[u8] {
    value.as_ref().map_or(&[], |v| v.as_bytes())
}

fn upstream_name(r: &AccessRecord) -> &str {
    r.upstream.as_deref().map_or("", |b| b.name.as_str())
}

fn secs(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// `$time_local` in UTC: `25/Nov/2026:20:53:09 +0000`.
pub fn time_local(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// ingress-nginx's default log-format-upstream, field for field.
pub fn render_upstream(r: &AccessRecord, escape_json: bool, out: &mut String) {
    let _ = write!(out, "{} - - [{}] \"", r.remote_addr, time_local(r.time));
    push_var(
        out,
        format!("{} {} {}", r.method, r.uri, r.version).as_bytes(),
        escape_json,
    );
    let _ = write!(out, "\" {} {} \"", r.status, r.body_bytes_sent);
    push_var(out, header_bytes(&r.referer), escape_json);
    out.push_str("\" \"");
    push_var(out, header_bytes(&r.user_agent), escape_json);
    let _ = write!(out, "\" {} {} [", r.request_length, secs(r.request_time));
    push_var(out, upstream_name(r).as_bytes(), escape_json);
    // Empty, not `-`, when no canary served: nginx prints an empty variable as nothing.
    out.push_str("] [");
    out.push_str(r.alternative_upstream.as_deref().unwrap_or(""));
    out.push_str("] ");
    match r.upstream_addr {
        Some(a) => {
            let _ = write!(out, "{a}");
        }
        None => out.push('-'),
    }
    out.push(' ');
    match r.upstream_response_length {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push('-'),
    }
    out.push(' ');
    match r.upstream_response_time {
        Some(t) => out.push_str(&secs(t)),
        None => out.push('-'),
    }
    out.push(' ');
    match r.upstream_status {
        Some(s) => {
            let _ = write!(out, "{s}");
        }
        None => out.push('-'),
    }
    out.push(' ');
    push_var(out, r.request_id.as_bytes(), escape_json);
}

/// The same fields as one JSON object per line.
pub fn render_json(r: &AccessRecord, out: &mut String) {
    let field = |out: &mut String, key: &str, value: &str, first: bool| {
        if !first {
            out.push(',');
        }
        out.push('"');
        out.push_str(key);
        out.push_str("\":\"");
        push_json_escaped(out, value);
        out.push('"');
    };
    out.push('{');
    field(out, "time", &time_local(r.time), true);
    field(out, "remote_addr", &r.remote_addr.to_string(), false);
    let lossy = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    field(out, "request_id", &lossy(r.request_id.as_bytes()), false);
    field(out, "method", r.method.as_str(), false);
    field(out, "uri", r.uri.as_str(), false);
    field(out, "protocol", r.version, false);
    let _ = write!(
        out,
        ",\"status\":{},\"body_bytes_sent\":{},\"request_length\":{},\"request_time\":{}",
        r.status,
        r.body_bytes_sent,
        r.request_length,
        secs(r.request_time)
    );
    field(out, "http_referer", &lossy(header_bytes(&r.referer)), false);
    field(
        out,
        "http_user_agent",
        &lossy(header_bytes(&r.user_agent)),
        false,
    );
    field(out, "namespace", &r.namespace, false);
    field(out, "ingress_name", &r.ingress, false);
    field(out, "service_name", &r.service, false);
    field(out, "proxy_upstream_name", upstream_name(r), false);
    field(
        out,
        "proxy_alternative_upstream_name",
        r.alternative_upstream.as_deref().unwrap_or(""),
        false,
    );
    field(
        out,
        "upstream_addr",
        &r.upstream_addr.map(|a| a.to_string()).unwrap_or_default(),
        false,
    );
    match r.upstream_status {
        Some(s) => {
            let _ = write!(out, ",\"upstream_status\":{s}");
        }
        None => out.push_str(",\"upstream_status\":null"),
    }
    match r.upstream_response_time {
        Some(t) => {
            let _ = write!(out, ",\"upstream_response_time\":{}", secs(t));
        }
        None => out.push_str(",\"upstream_response_time\":null"),
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        AccessRecord {
            remote_addr: "10.0.0.7".parse().unwrap(),
            time: UNIX_EPOCH + Duration::from_secs(1_795_639_989),
            method: Method::GET,
            uri: PathAndQuery::from_static("/a?b=1"),
            version: "HTTP/1.1",
            status: 200,
            body_bytes_sent: 12,
            referer: None,
            user_agent: Some(HeaderValue::from_static("curl/8.0 \"x\"")),
            request_length: 80,
            request_time: Duration::from_millis(3),
            upstream: Some(Arc::new(Backend::new(
                "shop",
                "web",
                "80",
                crate::snapshot::BackendKind::Missing,
            ))),
            alternative_upstream: None,
            upstream_addr: Some("10.1.0.5:8080".parse().unwrap()),
            upstream_response_length: Some(12),
            upstream_response_time: Some(Duration::from_millis(2)),
            upstream_status: Some(200),
            request_id: HeaderValue::from_static("abc"),
            namespace: "shop".into(),
            ingress: "web".into(),
            service: "web".into(),
            escape_json: false,
        }
    }

    #[test]
    fn upstream_format_matches_ingress_nginx_field_order() {
        let mut line = String::new();
        render_upstream(&record(), false, &mut line);
        assert_eq!(
            line,
            r#"10.0.0.7 - - [25/Nov/2026:20:53:09 +0000] "GET /a?b=1 HTTP/1.1" 200 12 "-" "curl/8.0 \x22x\x22" 80 0.003 [shop-web-80] [] 10.1.0.5:8080 12 0.002 200 abc"#
        );
    }

    #[test]
    fn escape_json_uses_json_escapes_instead_of_hex() {
        let mut line = String::new();
        render_upstream(&record(), true, &mut line);
        assert!(line.contains("\"curl/8.0 \\\"x\\\"\""), "{line}");
    }

    #[test]
    fn json_format_is_valid_json() {
        let mut line = String::new();
        render_json(&record(), &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["http_user_agent"], "curl/8.0 \"x\"");
        assert_eq!(v["proxy_upstream_name"], "shop-web-80");
    }

    /// A writer that blocks until the test lets it go.
    struct Stalled(std::sync::mpsc::Receiver<()>);

    impl std::io::Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_writer_drops_and_counts_lines_without_blocking() {
        let (release, stalled) = std::sync::mpsc::channel();
        let log = AccessLog::start(Format::Json, Stalled(stalled));
        let started = std::time::Instant::now();
        // The writer takes records until its 64 KiB buffer fills (a few hundred lines).
        let extra = 2_000;
        for _ in 0..QUEUE + extra {
            log.log(record());
        }
        assert!(started.elapsed() < Duration::from_secs(5), "log() waited");
        let dropped = log.dropped.load(Ordering::Relaxed) as usize;
        assert!(dropped > extra / 2 && dropped <= extra, "dropped {dropped}");
        drop(release);
    }

    #[test]
    fn escapes_quotes_tabs_and_bytes_outside_ascii() {
        let mut r = record();
        r.user_agent = Some(HeaderValue::from_bytes(b"a\"b\\c\td\xff").unwrap());
        let mut line = String::new();
        render_json(&r, &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["http_user_agent"], "a\"b\\c\td\u{fffd}");
        line.clear();
        render_upstream(&r, false, &mut line);
        assert!(line.contains(r#""a\x22b\x5Cc\x09d\xFF""#), "{line}");
        line.clear();
        render_upstream(&r, true, &mut line);
        assert!(line.contains("\"a\\\"b\\\\c\\td\u{fffd}\""), "{line}");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(time_local(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
    }
}
