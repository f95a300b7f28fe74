//! Hinted handoff: writes kept for a replica that did not acknowledge them, and their
//! delivery once it answers again.
//!
//! * [`HintStore`]: the durable hints (their own storage engine, never among user keys).
//! * [`Handoff`]: keeps hints for the coordinator and replays them, throttled, to
//!   targets that answer; dead targets are skipped without a call.

mod replay;
mod store;

pub use replay::Handoff;
pub use store::{Hint, HintStore};
