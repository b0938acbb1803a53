//! DEL: never fails and never blocks on the agent. The agent forgets the endpoint, or, when
//! it is down or slow (more than `command::DEREGISTER_TIMEOUT`), the deregistration is
//! queued on disk (`records`) and the next plugin call delivers it; the veth goes either way
//! (with it the pod's traffic: nothing unprotected is left), and the addresses go into
//! quarantine (Ward's IPAM) or back to the delegated plugin. What cannot be undone now is
//! retried by the sweep (`command::teardown`). Repeating DEL is a no-op, as the spec asks.
//!
//! Only a DEL whose environment or configuration is invalid fails: without them there is no
//! attachment and no state directory to act on.

use super::command::{Ctx, key_of, teardown};
use super::env::Attachment;

pub(super) fn del(ctx: &Ctx<'_>, attachment: &Attachment) {
    let netns = attachment.netns.as_deref().map(|p| p.to_string_lossy().into_owned());
    if !teardown(ctx, &key_of(attachment), netns.as_deref()) {
        tracing::warn!("DEL left work for the sweep; reporting success as the spec asks of DEL");
    }
}
