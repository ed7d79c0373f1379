//! Counters and histograms rendered in the Prometheus text format, without a registry crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed-bucket histogram of non-negative values.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders `name_bucket`, `name_sum` and `name_count` lines.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

pub const LATENCY_BOUNDS_S: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
pub const GROUP_SIZE_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// What the service counts.
pub struct Metrics {
    pub appends_total: AtomicU64,
    pub append_errors_total: AtomicU64,
    pub append_latency_s: Histogram,
    /// Method → route → status → count: looked up by `&str`, so that counting a request
    /// allocates nothing once its route has been seen.
    http: Mutex<BTreeMap<String, RouteCounts>>,
}

/// Route → status → count.
type RouteCounts = BTreeMap<String, BTreeMap<u16, u64>>;

impl Default for Metrics {
    fn default() -> Self {
        Self {
            appends_total: AtomicU64::new(0),
            append_errors_total: AtomicU64::new(0),
            append_latency_s: Histogram::new(LATENCY_BOUNDS_S),
            http: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    pub fn count_request(&self, method: &str, route: &str, status: u16) {
        let mut m = self.http.lock().expect("metrics lock");
        if !m.contains_key(method) {
            m.insert(method.to_string(), BTreeMap::new());
        }
        let routes = m.get_mut(method).expect("inserted");
        if !routes.contains_key(route) {
            routes.insert(route.to_string(), BTreeMap::new());
        }
        *routes.get_mut(route).expect("inserted").entry(status).or_default() += 1;
    }

    pub fn render_http(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP wattledger_http_requests_total HTTP requests by route and status\n# TYPE wattledger_http_requests_total counter"
        );
        let m = self.http.lock().expect("metrics lock");
        let counts = m.iter().flat_map(|(method, routes)| {
            routes
                .iter()
                .flat_map(move |(route, statuses)| statuses.iter().map(move |(status, n)| (method, route, status, n)))
        });
        for (method, route, status, n) in counts {
            let _ = writeln!(
                out,
                "wattledger_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
}

pub fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

pub fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_method_route_and_status_in_order() {
        let m = Metrics::default();
        for (method, route, status) in [
            ("POST", "/v1/readings", 201),
            ("GET", "/v1/sites", 200),
            ("POST", "/v1/readings", 201),
            ("POST", "/v1/readings", 422),
            ("GET", "unmatched", 404),
            ("POST", "/v1/readings", 201),
        ] {
            m.count_request(method, route, status);
        }
        let mut out = String::new();
        m.render_http(&mut out);
        let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                r#"wattledger_http_requests_total{method="GET",route="/v1/sites",status="200"} 1"#,
                r#"wattledger_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
                r#"wattledger_http_requests_total{method="POST",route="/v1/readings",status="201"} 3"#,
                r#"wattledger_http_requests_total{method="POST",route="/v1/readings",status="422"} 1"#,
            ]
        );
    }
}
