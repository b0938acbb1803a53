//! HTTP request rules, written once for the kernel and for user space: the request parser
//! ([`parse`]), the path normaliser ([`path`]), compiled rule sets and their matcher
//! ([`rules`]), and the per-connection state and flow record of the datapath ([`conn`]).
//!
//! Data flow: `WardNetworkPolicy` http rules → the compiler (`ward_policy::compile`) →
//! `WARD_POLICY` entries flagged [`rules::POLICY_HTTP`] plus [`rules::HttpSet`]s →
//! `to_pod` admits the connection at L4 and tail-calls the HTTP program (`ebpf/src/http.rs`),
//! which runs [`parse::Parser`] over every client byte and [`rules::match_request`] at every
//! request line → allow, or a reset to both ends, and an [`conn::HttpEvent`].
//!
//! Everything here is `no_std`, allocation-free, with bounded loops and masked indexes so
//! the verifier accepts it as is.

pub mod conn;
pub mod parse;
pub mod path;
pub mod rules;

pub use path::Error;
