//! Fuzz target: the CNI plugin's inputs, the `CNI_*` environment and the network
//! configuration on stdin.
//!
//! The input is `KEY=VALUE` lines (the environment), an empty line, then stdin. Whatever
//! they hold, parsing never panics, and every rejection is a CNI error whose code fits its
//! class (environment 4; undecodable configuration 6, wrong version 1, wrong field 7) and
//! whose message names the variable or field at fault. Where parsing fails (or the command
//! is VERSION) the plugin's whole `run` is driven too, since it then does no I/O: its stdout
//! must be the spec's error (or version) JSON.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use ward_agent::cni::command::CommandError;
use ward_agent::cni::env::{self, Verb};
use ward_agent::cni::error::ErrorCode;
use ward_agent::cni::netconf;

/// Whether an error message starts by naming the field(s) at fault: `field: ...`, where the
/// field is a JSON key or path (`podCIDRs[1]`, `ipam.type`, `cni.dev/valid-attachments`), or
/// two of them (`podCIDRs and ipam: ...`).
fn names_a_field(msg: &str) -> bool {
    msg.split_once(": ").is_some_and(|(head, _)| {
        head.split(" and ").all(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || "._-/[]".contains(c)))
    })
}

fuzz_target!(|data: &[u8]| {
    let split = data.windows(2).position(|w| w == b"\n\n").unwrap_or(data.len());
    let (env_part, stdin) = (&data[..split], data.get(split + 2..).unwrap_or_default());
    let vars: HashMap<String, String> = String::from_utf8_lossy(env_part)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let var = |k: &str| vars.get(k).cloned();

    let env_result = env::parse(var);
    // The code `run` would answer with, computed from a second parse (the errors are not
    // `Clone`; parsing is deterministic).
    let env_code = env::parse(var).err().map(|e| CommandError::Env(e).code());
    if let Err(e) = &env_result {
        let msg = e.to_string();
        assert!(msg.contains("CNI_"), "an environment error must name the variable: {msg}");
        assert_eq!(env_code, Some(ErrorCode::InvalidEnvironment as u32), "{msg}");
    }
    let _ = netconf::peek_version(stdin);
    let conf_result = netconf::parse(stdin);
    let conf_code = netconf::parse(stdin).err().map(|e| CommandError::NetConf(e).code());
    if let Err(e) = &conf_result {
        let msg = e.to_string();
        let code = if e.is_version() {
            ErrorCode::IncompatibleVersion
        } else if e.is_decode() {
            assert!(msg.starts_with("the network configuration "), "{msg}");
            ErrorCode::Decode
        } else {
            assert!(names_a_field(&msg), "a configuration error must name the field: {msg}");
            ErrorCode::InvalidNetworkConfig
        };
        assert_eq!(conf_code, Some(code as u32), "{msg}");
    }

    // `run` only reaches netlink, IPAM files or the agent once both parse and the command
    // is not VERSION: short of that it is pure, and its answer is checked whole.
    let version = matches!(&env_result, Ok(inv) if inv.verb == Verb::Version);
    if version || env_result.is_err() || conf_result.is_err() {
        let outcome = ward_agent::cni::run(var, stdin);
        let reply: serde_json::Value = serde_json::from_str(&outcome.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", outcome.stdout));
        if version {
            assert_eq!(outcome.exit_code, 0, "{}", outcome.stdout);
            assert!(reply["supportedVersions"].is_array(), "{reply}");
        } else {
            assert_eq!(outcome.exit_code, 1, "{}", outcome.stdout);
            let code = reply["code"].as_u64().unwrap_or_else(|| panic!("no code: {reply}"));
            // The environment is read first: its error wins.
            let expected = env_code.or(conf_code);
            assert_eq!(Some(code), expected.map(u64::from), "{reply}");
            assert!(reply["msg"].as_str().is_some_and(|m| !m.is_empty()), "{reply}");
            assert!(reply["cniVersion"].is_string(), "{reply}");
        }
    }
});
