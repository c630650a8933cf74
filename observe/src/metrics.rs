//! Prometheus metrics: a [`MetricSet`] built on each scrape from the process's own counters
//! (per-core counters are summed here, never on the packet path), latency histograms backed by
//! HdrHistogram and exposed as Prometheus histograms, and the HTTP endpoint that serves them.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Label pairs of one sample.
pub type Labels = Vec<(&'static str, String)>;

/// Bucket bounds (seconds) for recovery latency: path lost → new path active. Recovery waits
/// for `path_dead_after` or a client's switch, so the interesting range is 10 ms to a minute.
pub const RECOVERY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
];

/// Bucket bounds (seconds) for reattach latency: request (or new path seen) → bound. One
/// challenge round trip, so 1 ms to 5 s.
pub const REATTACH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A latency distribution: HdrHistogram (microseconds, 2 significant digits — 1 % — up to an hour, about 26 KiB)
/// plus the exact sum, rendered as a Prometheus histogram with fixed bucket bounds.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hdr: Histogram<u64>,
    sum_us: u128,
    buckets: &'static [f64],
}

impl LatencyHistogram {
    /// An empty histogram exposed with `buckets` (seconds, increasing).
    ///
    /// # Panics
    /// Never: the bounds are constants HdrHistogram accepts.
    #[must_use]
    pub fn new(buckets: &'static [f64]) -> Self {
        #[allow(clippy::unwrap_used)] // constant, valid bounds
        let hdr = Histogram::new_with_bounds(1, 3_600_000_000, 2).unwrap();
        LatencyHistogram {
            hdr,
            sum_us: 0,
            buckets,
        }
    }

    /// Record one observation (saturating at an hour).
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.hdr.saturating_record(us);
        self.sum_us += u128::from(us);
    }

    /// Observations so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.hdr.len()
    }

    /// The value at quantile `q` (0..=1), if anything was recorded.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        (!self.hdr.is_empty()).then(|| Duration::from_micros(self.hdr.value_at_quantile(q)))
    }

    /// Per-bucket (not cumulative) counts, the last bound being `+Inf`.
    fn bucket_counts(&self) -> Vec<(f64, u64)> {
        let mut out: Vec<(f64, u64)> = self.buckets.iter().map(|b| (*b, 0)).collect();
        out.push((f64::MAX, 0));
        for v in self.hdr.iter_recorded() {
            // The value HdrHistogram reports for the cell is its highest equivalent value;
            // at 2 significant digits that moves a bucket edge by at most 1 %.
            #[allow(clippy::cast_precision_loss)]
            let secs = v.value_iterated_to() as f64 / 1e6;
            let i = out
                .iter()
                .position(|(b, _)| secs <= *b)
                .unwrap_or(out.len() - 1);
            out[i].1 += v.count_at_value();
        }
        out
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_us as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, self.count(), &self.bucket_counts(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[derive(Debug)]
enum Samples {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, i64)>),
    Histogram(Vec<(Labels, LatencyHistogram)>),
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Samples,
}

/// The metrics of one scrape. Counter names are given without `_total` (the encoder adds it).
#[derive(Debug, Default)]
pub struct MetricSet {
    families: Vec<Family>,
}

impl MetricSet {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        MetricSet::default()
    }

    fn family(&mut self, name: &'static str, help: &'static str, empty: Samples) -> &mut Samples {
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    help,
                    samples: empty,
                });
                self.families.len() - 1
            }
        };
        &mut self.families[i].samples
    }

    /// Add a counter sample (the same name and labels given twice are summed).
    pub fn counter(&mut self, name: &'static str, help: &'static str, labels: Labels, v: u64) {
        if let Samples::Counter(s) = self.family(name, help, Samples::Counter(Vec::new())) {
            match s.iter_mut().find(|(l, _)| *l == labels) {
                Some((_, x)) => *x += v,
                None => s.push((labels, v)),
            }
        }
    }

    /// Set a gauge sample.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, v: i64) {
        if let Samples::Gauge(s) = self.family(name, help, Samples::Gauge(Vec::new())) {
            match s.iter_mut().find(|(l, _)| *l == labels) {
                Some((_, x)) => *x = v,
                None => s.push((labels, v)),
            }
        }
    }

    /// Add a histogram.
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        h: &LatencyHistogram,
    ) {
        if let Samples::Histogram(s) = self.family(name, help, Samples::Histogram(Vec::new())) {
            s.push((labels, h.clone()));
        }
    }

    /// The OpenMetrics text exposition of the set (Prometheus scrapes it natively).
    #[must_use]
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

impl Collector for MetricSet {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            match &f.samples {
                Samples::Counter(s) => {
                    let mut e =
                        encoder.encode_descriptor(f.name, f.help, None, MetricType::Counter)?;
                    for (labels, v) in s {
                        let c = ConstCounter::new(*v);
                        if labels.is_empty() {
                            c.encode(e)?;
                            break;
                        }
                        c.encode(e.encode_family(&escaped(labels))?)?;
                    }
                }
                Samples::Gauge(s) => {
                    let mut e =
                        encoder.encode_descriptor(f.name, f.help, None, MetricType::Gauge)?;
                    for (labels, v) in s {
                        let g = ConstGauge::new(*v);
                        if labels.is_empty() {
                            g.encode(e)?;
                            break;
                        }
                        g.encode(e.encode_family(&escaped(labels))?)?;
                    }
                }
                Samples::Histogram(s) => {
                    let mut e =
                        encoder.encode_descriptor(f.name, f.help, None, MetricType::Histogram)?;
                    for (labels, h) in s {
                        if labels.is_empty() {
                            h.encode(e)?;
                            break;
                        }
                        h.encode(e.encode_family(&escaped(labels))?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Label values escaped as the exposition format requires (`\\`, `\"`, `\n`); the encoder
/// writes them as given. A label set without labels is written as the bare name, so a family
/// has either one unlabelled sample or only labelled ones.
fn escaped(labels: &Labels) -> Labels {
    labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            (*k, v)
        })
        .collect()
}

/// The content type of [`MetricSet::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Parse a `metrics_listen` value: `""` or `"off"` disables the endpoint.
///
/// # Errors
/// Not an address, with what to write.
pub fn parse_listen(text: &str) -> Result<Option<SocketAddr>, String> {
    match text.trim() {
        "" | "off" => Ok(None),
        t => t.parse().map(Some).map_err(|_| {
            format!("`{t}` is not an address and port (e.g. 127.0.0.1:9470), nor \"off\"")
        }),
    }
}

/// Whether `addr` is reachable only from this host.
#[must_use]
pub fn is_local(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback(),
    }
}

/// Renders the metrics on each scrape (runs on the endpoint's thread).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The HTTP endpoint: `GET /metrics`, on its own thread; stopped on drop.
pub struct MetricsServer {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Listen on `addr` and serve `render()` at `/metrics`.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn start(addr: SocketAddr, render: Render) -> anyhow::Result<MetricsServer> {
        let server = Arc::new(
            tiny_http::Server::http(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?,
        );
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow::anyhow!("{addr} is not an IP address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || serve(&server, &stop, &render))?
        };
        Ok(MetricsServer {
            addr: bound,
            server,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (the port is chosen by the kernel when 0 was asked).
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header(name: &str, value: &str) -> Option<tiny_http::Header> {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn serve(server: &tiny_http::Server, stop: &AtomicBool, render: &Render) {
    while !stop.load(Ordering::Relaxed) {
        let req = match server.recv() {
            Ok(r) => r,
            Err(_) => continue,
        };
        let path = req.url().split('?').next().unwrap_or("");
        let resp = match (req.method(), path) {
            (tiny_http::Method::Get, "/metrics") => {
                let mut r = tiny_http::Response::from_string(render());
                if let Some(h) = header("Content-Type", CONTENT_TYPE) {
                    r.add_header(h);
                }
                r
            }
            (tiny_http::Method::Get, "/") => {
                tiny_http::Response::from_string("Jumping metrics: GET /metrics\n")
            }
            (tiny_http::Method::Get, _) => {
                tiny_http::Response::from_string("not found: GET /metrics\n").with_status_code(404)
            }
            _ => tiny_http::Response::from_string("only GET is served\n").with_status_code(405),
        };
        let _ = req.respond(resp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let mut h = LatencyHistogram::new(RECOVERY_BUCKETS);
        for ms in [5, 20, 20, 700, 3_000, 100_000] {
            h.record(Duration::from_millis(ms));
        }
        let mut m = MetricSet::new();
        m.histogram("jumping_recovery_latency_seconds", "help", vec![], &h);
        let text = m.render();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
                .rsplit(' ')
                .next()
                .map(str::to_string)
                .unwrap_or_default()
        };
        assert_eq!(line("jumping_recovery_latency_seconds_count"), "6");
        assert_eq!(
            line("jumping_recovery_latency_seconds_bucket{le=\"0.01\"}"),
            "1"
        );
        assert_eq!(
            line("jumping_recovery_latency_seconds_bucket{le=\"0.025\"}"),
            "3"
        );
        assert_eq!(
            line("jumping_recovery_latency_seconds_bucket{le=\"1.0\"}"),
            "4"
        );
        assert_eq!(
            line("jumping_recovery_latency_seconds_bucket{le=\"5.0\"}"),
            "5"
        );
        assert_eq!(
            line("jumping_recovery_latency_seconds_bucket{le=\"60.0\"}"),
            "5"
        );
        assert_eq!(
            line("jumping_recovery_latency_seconds_bucket{le=\"+Inf\"}"),
            "6"
        );
        let sum: f64 = line("jumping_recovery_latency_seconds_sum")
            .parse()
            .unwrap_or(0.0);
        assert!((sum - 103.745).abs() < 1e-6, "{sum}");
        assert!(h
            .quantile(0.5)
            .is_some_and(|q| q >= Duration::from_millis(19)));
    }

    #[test]
    fn counters_sum_gauges_set_and_labels_escape() {
        let mut m = MetricSet::new();
        m.counter("jumping_x", "x", vec![("reason", "a\"b".into())], 2);
        m.counter("jumping_x", "x", vec![("reason", "a\"b".into())], 3);
        m.gauge("jumping_g", "g", vec![], 1);
        m.gauge("jumping_g", "g", vec![], 7);
        let text = m.render();
        assert!(
            text.contains("jumping_x_total{reason=\"a\\\"b\"} 5"),
            "{text}"
        );
        assert!(text.contains("jumping_g 7"), "{text}");
        assert!(text.contains("# TYPE jumping_x counter"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn listen_values() {
        assert_eq!(parse_listen("off"), Ok(None));
        assert_eq!(parse_listen(""), Ok(None));
        assert!(parse_listen("127.0.0.1:9470").is_ok_and(|a| a.is_some_and(|a| is_local(&a))));
        assert!(parse_listen("0.0.0.0:9470").is_ok_and(|a| a.is_some_and(|a| !is_local(&a))));
        assert!(parse_listen("localhost").unwrap_err().contains("localhost"));
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(request.as_bytes()).expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn endpoint_serves_metrics_and_refuses_the_rest() {
        let render: Render = Arc::new(|| {
            let mut m = MetricSet::new();
            m.counter("jumping_test", "test", vec![], 42);
            m.render()
        });
        let server =
            MetricsServer::start("127.0.0.1:0".parse().expect("addr"), render).expect("start");
        let ok = get(
            server.addr(),
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("jumping_test_total 42"), "{ok}");
        assert!(ok.contains("openmetrics-text"), "{ok}");
        let nf = get(
            server.addr(),
            "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
        let bad = get(
            server.addr(),
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        assert!(bad.starts_with("HTTP/1.1 405"), "{bad}");
        drop(server);
    }
}
