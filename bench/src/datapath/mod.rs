//! (being written)

use crate::{Ctx, PartResult};

pub fn run(_ctx: &Ctx) -> anyhow::Result<PartResult> {
    anyhow::bail!("not written yet")
}
