//! Depth first through N_TO_N arrays. A worker that has just recorded an array child's
//! success takes on the same index of the job's N_TO_N successor next, itself, instead
//! of leaving it to the stream and a message (see
//! [`batchplane::stream::arrays::chained_successor`] for which successor). Through SQS
//! the successor child would wait behind all the pool has queued, its predecessor's own
//! window included, so a big array's successor fell further behind the longer it ran;
//! taken on here it starts within a claim of its predecessor child ending, and costs no
//! send, receive, delete or window slot.
//!
//! The worker decides before it records the predecessor child's success, and says so
//! in that record (`followed_by` on the attempt), so the stream does not release the
//! successor child as well. From then on the predecessor child's message carries it:
//! the message is deleted only once the successor child is accounted for. If the worker
//! dies first, or cannot take it on after all, the message comes back; the worker that
//! gets it finds the predecessor child ended and follows the chain to the successor
//! child, which it claims (creating it, or taking it over once its lease has lapsed).

use super::messages::Receipt;
use super::{need, Ctx, Held, Worker};
use batchplane::domain::batch::Dependent;
use batchplane::queue::TaskMessage;
use batchplane::store::StoreError;
use std::time::Instant;

/// The child to take on after child `index` of `job_id` succeeded, if any (one this
/// worker has room for). An error where a job could not be read now.
pub(super) async fn successor(
    ctx: &Ctx,
    job_id: &str,
    index: u32,
) -> Result<Option<TaskMessage>, StoreError> {
    if !ctx.chain_successors {
        return Ok(None);
    }
    let Some(pred) = ctx.jobs.get(job_id).await? else {
        return Ok(None);
    };
    for d in pred.dependents.iter().filter_map(|d| Dependent::decode(d)) {
        let Dependent::NToN(dep_id) = d else { continue };
        let Some(dep) = ctx.jobs.get(&dep_id).await? else {
            continue;
        };
        if let Some(m) = batchplane::stream::arrays::chained_successor(&pred, &dep, index) {
            return Ok(need(&m).fits_in(ctx.capacity).then_some(m));
        }
    }
    Ok(None)
}

impl Worker {
    /// Take on `m` next, carried by the message `receipt` (kept until `m` is accounted
    /// for). False where this worker will not (draining, too small for it, or the
    /// message is no longer held here): then the message must come back, for a worker
    /// that will.
    pub(super) fn take_on(&mut self, receipt: &Receipt, m: TaskMessage) -> bool {
        if self.draining || !self.slots.could_ever_fit(need(&m)) || !self.messages.attach(receipt) {
            return false;
        }
        tracing::debug!(job_id = %m.job_id, task_id = %m.task_id, "taking on the N_TO_N successor child");
        self.held.push_front(Held {
            receipt: receipt.clone(),
            message: m,
            since: Instant::now(),
        });
        true
    }

    /// A delivered task had already succeeded: its chained successor child rides on
    /// its message. If this worker will not take it on, the message comes back for one
    /// that will (the successor child may be RUNNING under a lapsed lease, with nothing
    /// else to bring it back).
    pub(super) fn carry_on(&mut self, receipt: &Receipt, m: TaskMessage) {
        if self.take_on(receipt, m) {
            self.handled(receipt);
        } else {
            self.messages.later(receipt);
        }
    }
}
