//! STATUS (spec 1.1.0): success only when an ADD could succeed now. Code 50 ("not
//! available") when the agent is unreachable, has not synced its datastore, or a pod CIDR of
//! Ward's IPAM has no address to hand out; a delegated IPAM plugin is asked too when it speaks
//! 1.1.0 (older plugins have no STATUS to ask). Existing pods keep their enforcement whatever
//! STATUS says (the pinned maps and programs stay), so code 51 is never needed.

use std::time::Duration;

use super::command::{CommandError, Ctx};
use super::netconf::Ipam;
use crate::api::client;
use crate::api::proto::{Request, Response};

/// STATUS asks one cheap question; a slow agent is as unavailable as a dead one.
const READINESS_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) fn status(ctx: &Ctx<'_>) -> Result<(), CommandError> {
    let socket = &ctx.conf.agent_socket;
    match client::call(socket, &Request::Readiness, READINESS_TIMEOUT) {
        Ok(Response::Readiness(r)) if r.ready => {}
        Ok(Response::Readiness(r)) => {
            let why = r.reason.unwrap_or_else(|| "not ready".into());
            return Err(CommandError::NotReady {
                reason: format!("the ward agent cannot protect new pods yet: {why}"),
            });
        }
        Ok(other) => {
            return Err(CommandError::UnexpectedAnswer {
                request: "the readiness query",
                answer: format!("{other:?}"),
            });
        }
        Err(e) => return Err(CommandError::NotReady { reason: e.to_string() }),
    }
    match &ctx.conf.ipam {
        Ipam::Ward { ranges, quarantine } => {
            if let Err(e) = ctx.store().room(ranges, *quarantine) {
                return Err(CommandError::NotReady { reason: e.to_string() });
            }
        }
        Ipam::Delegated { .. } => {
            let Some(delegate) = ctx.delegate()? else { return Ok(()) };
            if delegate.versions().iter().any(|v| v == ctx.conf.cni_version.as_str()) {
                delegate.run("STATUS", &ctx.plain_env(), ctx.stdin)?;
            } else {
                tracing::debug!(plugin = %delegate.plugin, "the ipam plugin predates STATUS; not asked");
            }
        }
    }
    Ok(())
}
