//! The agent's local API: a root-only unix socket speaking newline-delimited JSON, one
//! request and one response per connection (a followed flow query, `ward observe -f`, keeps
//! the connection and streams one response line per flow). The CNI plugin registers endpoints through it;
//! the `ward` CLI reads status, endpoints and flows through it. `http` serves probes and
//! Prometheus metrics from the same calls.

pub mod client;
pub mod http;
pub mod proto;
pub mod server;
