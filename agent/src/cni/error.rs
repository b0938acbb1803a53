//! The CNI error object: the code table and the JSON the runtime reads from stdout when the
//! plugin exits with status 1.
//!
//! Codes 1-99 are the spec's well-known ones; 100 and up belong to the plugin. Ward's own codes
//! are stable: runtimes and operators may match on them, so they are never renumbered.

use serde::Serialize;

/// Why a command failed, as the number the runtime sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// The network configuration asks for a CNI version this plugin does not speak.
    IncompatibleVersion = 1,
    /// The container (its network namespace) does not exist; the runtime need not clean up.
    UnknownContainer = 3,
    /// A required `CNI_*` variable is missing or malformed, or the command is unknown.
    InvalidEnvironment = 4,
    /// Reading or writing the plugin's own state (IPAM files) failed.
    Io = 5,
    /// The network configuration on stdin is not JSON.
    Decode = 6,
    /// The network configuration is JSON but a field is missing or wrong.
    InvalidNetworkConfig = 7,
    /// A transient condition (the agent is unreachable or slow, every free address is still in
    /// quarantine); the runtime should retry.
    TryAgainLater = 11,
    /// STATUS: the plugin cannot service ADD now (the agent is down or has not synced its
    /// datastore, or a pod CIDR has no free address).
    NotAvailable = 50,
    /// Every address of a pod CIDR is allocated.
    AddressesExhausted = 100,
    /// Creating or configuring an interface, address, route or neighbour failed.
    Interface = 101,
    /// The agent answered the registration with an error: the pod cannot be protected.
    RegistrationRefused = 102,
    /// CHECK found the attachment differs from what ADD set up.
    CheckFailed = 103,
    /// The agent answered with something the protocol does not allow here.
    AgentProtocol = 104,
    /// The delegated IPAM plugin could not be run or printed something that is not a CNI
    /// result (its own error objects are passed through with their codes).
    Delegate = 105,
}

impl ErrorCode {
    pub const fn get(self) -> u32 {
        self as u32
    }
}

/// The spec's error JSON.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ErrorReply {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl ErrorReply {
    /// `code` is an [`ErrorCode`] or, for an error a delegated plugin reported, its code.
    pub fn new(cni_version: &str, code: u32, msg: String, details: Option<String>) -> Self {
        Self { cni_version: cni_version.to_owned(), code, msg, details }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_has_the_spec_field_names() {
        let r = ErrorReply::new("1.0.0", ErrorCode::InvalidNetworkConfig.get(), "podCIDRs: missing".into(), None);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j, serde_json::json!({"cniVersion": "1.0.0", "code": 7, "msg": "podCIDRs: missing"}));
    }
}
