//! What Jumping shows operators and auditors, without slowing or changing a decision:
//!
//! - [`log`]: structured logs (`tracing`), human-readable on a terminal and JSON otherwise,
//!   with levels per module;
//! - [`metrics`]: a Prometheus endpoint, histograms backed by HdrHistogram;
//! - [`export`]: the SIEM export of events (file with rotation, syslog RFC 5424 over UDP and
//!   TCP) through bounded queues that drop and count rather than wait.
//!
//! Both the control process and the data plane use this crate; neither puts a payload, key or
//! proof into anything it hands here.

pub mod export;
pub mod log;
pub mod metrics;
