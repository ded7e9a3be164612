//! Release windows: how many of a job's ready tasks may wait in SQS at once.
//!
//! A DAG's tasks (and an N_TO_N array's children) become ready in any order, released
//! by whichever stream batch finishes their last dependency, so no cursor can pace them
//! the way an array's dispatch cursor paces its children. A job with a window (see
//! [`crate::domain::JobRecord::release_window`]) instead has an item of free slots:
//!
//! - **Taking.** Sending `k` of its tasks takes `k` slots (a conditional decrement that
//!   never goes below zero; the first take creates the item with the whole window).
//! - **Holding.** Ready tasks that find no slot are held: bundles of up to [`BUNDLE`]
//!   messages with their pools (`J#<job>#<shard>#H`, `H#<time>-<hash of its task ids>`,
//!   oldest first), each put on condition that it is not held already, and counted in
//!   `held`.
//! - **Giving back.** A worker's claim takes the task's message out of SQS; the stream
//!   record of the claim gives the slot back, and the giver sends held tasks in the
//!   freed slots. A bundle is taken out by deleting it (on condition that it is still
//!   there, so two givers never both send it), then sent whole: a window may be overrun
//!   by less than a bundle.
//!
//! - **Following the claim rate.** The window a job starts with (`BATCHPLANE_JOB_WINDOW`)
//!   is where it starts, not where it stays: the item counts the claims given back
//!   (`claimed` since `rate_since`), and every [`RATE_PERIOD_MS`] the fanout resizes the
//!   window to about [`WindowPolicy::seconds`] of the job's own claims
//!   ([`Store::resize_window`]: the limit and the free slots move together, on condition
//!   that nobody resized it since). A job's waiting messages are then about a second of
//!   its pool's work whatever the pool's rate: a job submitted behind it waits about
//!   that long, and a fast pool is not starved by a window sized for a slow one.
//!
//! Slots never exceed the window: a give-back that would (a stream record applied twice)
//! stops at it. A slot can leak (a message sent twice is claimed once; a send cut off
//! between its take and its message); the reconciler gives a job its whole window back
//! when none of its pools has a message waiting and the item has not changed for
//! [`WINDOW_SETTLES_AFTER_MS`]. Every write of the item stamps `changed_at`: between a
//! take and its messages' send nothing waits in SQS either, and a repair then would
//! hand out the slots of messages on their way (and a later refill would send held
//! tasks in them, past the window).

use super::item::*;
use super::request::{send, send_if, send_if_current, CONFLICT_RETRIES};
use super::{Store, StoreError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use futures::{stream, StreamExt, TryStreamExt};

/// A task waiting for a slot of its job's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldTask {
    pub task_id: String,
    pub shard: u32,
    /// The pool whose queue it goes to.
    pub pool: String,
    /// Its message body, as it will be sent.
    pub body: String,
}

/// Held tasks kept as one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBundle {
    pub shard: u32,
    pub sk: String,
    pub tasks: Vec<HeldTask>,
}

/// The most tasks held per item: 25 messages of about 100 bytes are three write units to
/// put and three to delete, where an item each would be 50.
pub const BUNDLE: usize = 25;

/// Tasks held per item for a window of `window`: a tenth of it, so sending a bundle whole
/// overruns the window by under a tenth (a window of under 20 holds task by task).
pub fn bundle_size(window: u32) -> usize {
    (window as usize / 10).clamp(1, BUNDLE)
}

/// How long a job's slots item must have gone unchanged before the reconciler may take
/// an empty queue as a leak: far longer than any take, send and hold of one batch.
pub const WINDOW_SETTLES_AFTER_MS: i64 = 30_000;

/// How long claims are counted before a window is resized to their rate.
pub const RATE_PERIOD_MS: i64 = 2_000;

/// The smallest window a job's claim rate may shrink it to (or its starting window,
/// where that is smaller): a refill through the stream takes a fraction of a second, and
/// a window much smaller than that much work leaves workers idle.
pub const WINDOW_FLOOR: u32 = 32;

/// The largest window a job's claim rate may grow it to: SQS keeps at most 120,000
/// messages in flight per queue, shared by every job of a pool.
pub const WINDOW_CEILING: u32 = 20_000;

/// How a windowed job's window follows its claims.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowPolicy {
    /// Seconds of the job's own claims its window holds; 0 keeps every window at the
    /// size the job started with.
    pub seconds: f64,
}

impl Default for WindowPolicy {
    fn default() -> Self {
        WindowPolicy { seconds: 1.0 }
    }
}

impl WindowPolicy {
    /// A window that stays at its starting size.
    pub const FIXED: WindowPolicy = WindowPolicy { seconds: 0.0 };

    /// The window a job that started at `start` should have now, given its slots item
    /// as a give-back left it at `now`; `None` while the period is not over, or where
    /// the window is already that size.
    pub fn resized(&self, start: u32, slots: &Slots, now: i64) -> Option<u32> {
        let elapsed = now - slots.rate_since;
        if self.seconds <= 0.0 || slots.rate_since == 0 || elapsed < RATE_PERIOD_MS {
            return None;
        }
        let rate = slots.claimed.max(0) as f64 * 1000.0 / elapsed as f64;
        let floor = start.clamp(1, WINDOW_FLOOR);
        let ceiling = start.max(WINDOW_CEILING);
        // At most halved in one period: a pause between two levels of a DAG is not its
        // rate.
        let current = u32::try_from(slots.limit.max(1)).unwrap_or(u32::MAX);
        let want = (rate * self.seconds).ceil().min(f64::from(u32::MAX)) as u32;
        let next = want.max(current / 2).clamp(floor, ceiling);
        (next != current || slots.claimed > 0).then_some(next)
    }
}

/// Shards of a job read at once when looking for its held bundles.
pub const HELD_WALK_CONCURRENCY: usize = 8;

/// A held bundle from its item; `None` for an item that is not one.
fn held_bundle_of(shard: u32, item: &Item) -> Option<HeldBundle> {
    let r = Reader::new(item);
    let (Ok(sk), Ok(json)) = (r.req_s("sk"), r.req_s("tasks")) else {
        return None;
    };
    let wire: Vec<(String, String, u32, String)> = serde_json::from_str(&json).unwrap_or_default();
    Some(HeldBundle {
        shard,
        sk,
        tasks: wire
            .into_iter()
            .map(|(task_id, pool, shard, body)| HeldTask {
                task_id,
                shard,
                pool,
                body,
            })
            .collect(),
    })
}

/// A job's slots item as last written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slots {
    pub free: i64,
    /// Tasks held (put and not yet taken back out).
    pub held: i64,
    /// When the item was last written (epoch ms; 0 before its first write).
    pub changed_at: i64,
    /// The window now (0 before the first take: the job's starting window).
    pub limit: i64,
    /// Claims given back since `rate_since` (epoch ms; 0 before the first give-back).
    pub claimed: i64,
    pub rate_since: i64,
}

impl Slots {
    /// The window now, `start` before the item's first write.
    pub fn window(&self, start: u32) -> u32 {
        if self.limit > 0 {
            u32::try_from(self.limit).unwrap_or(u32::MAX)
        } else {
            start
        }
    }
}

fn slots_key(job_id: &str) -> Item {
    key(job_pk(job_id), SLOTS_SK.into())
}

fn slots_of(item: &Item) -> Slots {
    let r = Reader::new(item);
    Slots {
        free: r.opt_n("slots").ok().flatten().unwrap_or(0),
        held: r.opt_n("held").ok().flatten().unwrap_or(0),
        changed_at: r.opt_n("changed_at").ok().flatten().unwrap_or(0),
        limit: r.opt_n("slot_limit").ok().flatten().unwrap_or(0),
        claimed: r.opt_n("claimed").ok().flatten().unwrap_or(0),
        rate_since: r.opt_n("rate_since").ok().flatten().unwrap_or(0),
    }
}

const HOLD_CONCURRENCY: usize = 16;

impl Store {
    /// Take up to `want` free slots of a job's window (`window`, its starting size, the
    /// first time). How many were taken: fewer than asked when fewer are free.
    pub async fn take_slots(
        &self,
        job_id: &str,
        window: u32,
        want: u32,
    ) -> Result<u32, StoreError> {
        let mut k = want;
        for _ in 0..CONFLICT_RETRIES {
            if k == 0 {
                return Ok(0);
            }
            let r = send_if_current(
                self.ddb
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(slots_key(job_id)))
                    .update_expression("SET slots = if_not_exists(slots, :w) - :k, slot_limit = if_not_exists(slot_limit, :w), changed_at = :now")
                    .condition_expression("(attribute_not_exists(slots) AND :w >= :k) OR slots >= :k")
                    .expression_attribute_values(":w", n(window))
                    .expression_attribute_values(":k", n(k))
                    .expression_attribute_values(":now", n(self.now()))
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    ),
            )
            .await?;
            match r {
                Ok(_) => return Ok(k),
                Err(current) => {
                    let free = current
                        .as_ref()
                        .map_or(i64::from(window), |c| slots_of(c).free);
                    k = k.min(u32::try_from(free.max(0)).unwrap_or(0));
                }
            }
        }
        Ok(0)
    }

    /// Give `count` slots back, never above the window (`limit` is the window as the
    /// caller last saw it: a wrong one costs a retry), `claimed` of them for claims (the
    /// rest were taken for a send that failed). The item as it is after.
    pub async fn give_slots(
        &self,
        job_id: &str,
        mut limit: u32,
        count: u32,
        claimed: u32,
    ) -> Result<Slots, StoreError> {
        if count == 0 {
            return self.slots(job_id).await;
        }
        for _ in 0..CONFLICT_RETRIES {
            let room = i64::from(limit) - i64::from(count);
            let r = send_if_current(
                self.ddb
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(slots_key(job_id)))
                    .update_expression(
                        "SET slots = slots + :k, changed_at = :now, \
                         rate_since = if_not_exists(rate_since, :now) ADD claimed :c",
                    )
                    .condition_expression("slot_limit = :limit AND slots <= :room")
                    .expression_attribute_values(":k", n(count))
                    .expression_attribute_values(":c", n(claimed))
                    .expression_attribute_values(":limit", n(limit))
                    .expression_attribute_values(":room", n(room))
                    .expression_attribute_values(":now", n(self.now()))
                    .return_values(ReturnValue::AllNew)
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    ),
            )
            .await?;
            let current = match r {
                Ok(out) => return Ok(out.attributes().map(slots_of).unwrap_or_default()),
                Err(Some(current)) => slots_of(&current),
                // Never taken from: the window is whole.
                Err(None) => return Ok(Slots::default()),
            };
            if current.limit != i64::from(limit) {
                // Resized since the caller looked: give against the window as it is.
                limit = current.window(limit);
                continue;
            }
            // Within `count` of the window: fill it, unless a take got in between.
            let filled = send_if(
                self.ddb
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(slots_key(job_id)))
                    .update_expression(
                        "SET slots = slot_limit, changed_at = :now, \
                         rate_since = if_not_exists(rate_since, :now) ADD claimed :c",
                    )
                    .condition_expression("slots = :seen AND slot_limit = :limit")
                    .expression_attribute_values(":seen", n(current.free))
                    .expression_attribute_values(":limit", n(limit))
                    .expression_attribute_values(":c", n(claimed))
                    .expression_attribute_values(":now", n(self.now()))
                    .return_values(ReturnValue::AllNew),
            )
            .await?;
            if let Some(out) = filled {
                return Ok(out.attributes().map(slots_of).unwrap_or_default());
            }
        }
        self.slots(job_id).await
    }

    /// Resize a job's window to `limit`, moving its free slots by as much, and start
    /// counting its claims afresh; on condition that the item is as `seen` left it
    /// (nobody resized it since). The item after, or `None` where it had changed.
    pub async fn resize_window(
        &self,
        job_id: &str,
        seen: &Slots,
        limit: u32,
    ) -> Result<Option<Slots>, StoreError> {
        let out = send_if(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(slots_key(job_id)))
                .update_expression(
                    "SET slot_limit = :limit, slots = slots + :delta, claimed = claimed - :c, \
                     rate_since = :now, changed_at = :now",
                )
                .condition_expression("slot_limit = :old AND rate_since = :since")
                .expression_attribute_values(":limit", n(limit))
                .expression_attribute_values(":delta", n(i64::from(limit) - seen.limit))
                .expression_attribute_values(":c", n(seen.claimed))
                .expression_attribute_values(":old", n(seen.limit))
                .expression_attribute_values(":since", n(seen.rate_since))
                .expression_attribute_values(":now", n(self.now()))
                .return_values(ReturnValue::AllNew),
        )
        .await?;
        Ok(out.and_then(|o| o.attributes().map(slots_of)))
    }

    /// A worker found nothing to run for a message sent in a slot (a second copy of it,
    /// or its task cancelled while it waited): the slot comes back, never above the
    /// window, and `freed_at` tells the fanout to send a held task in it. Whether it did.
    pub async fn give_back_unclaimed(&self, job_id: &str) -> Result<bool, StoreError> {
        Ok(send_if(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(slots_key(job_id)))
                .update_expression("SET slots = slots + :one, freed_at = :now, changed_at = :now")
                .condition_expression("slots < slot_limit")
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":now", n(self.now())),
        )
        .await?
        .is_some())
    }

    /// Give a job its whole window back (the window it has now; `window`, its starting
    /// size, if it never took any) (the reconciler, when none of its messages waits), on condition that the item is still as `seen`: a take, give or hold since
    /// means the window is in use. Whether it was reset.
    pub async fn reset_slots(
        &self,
        job_id: &str,
        window: u32,
        seen: &Slots,
    ) -> Result<bool, StoreError> {
        // Its free count too: a take in the millisecond of the write seen has the
        // same stamp.
        let unchanged = if seen.changed_at == 0 {
            "attribute_not_exists(changed_at)"
        } else {
            "changed_at = :seen AND slots = :free"
        };
        let mut update = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(slots_key(job_id)))
            .update_expression("SET slots = if_not_exists(slot_limit, :w), changed_at = :now")
            .condition_expression(unchanged)
            .expression_attribute_values(":w", n(window))
            .expression_attribute_values(":now", n(self.now()));
        if seen.changed_at != 0 {
            update = update
                .expression_attribute_values(":seen", n(seen.changed_at))
                .expression_attribute_values(":free", n(seen.free));
        }
        Ok(send_if(update).await?.is_some())
    }

    /// A job's slots item (all zero before its first take).
    pub async fn slots(&self, job_id: &str) -> Result<Slots, StoreError> {
        let out = send(
            self.ddb
                .get_item()
                .table_name(&self.table)
                .set_key(Some(slots_key(job_id)))
                .consistent_read(true),
        )
        .await?;
        Ok(out.item().map(slots_of).unwrap_or_default())
    }

    /// Hold tasks until slots free up, in bundles of `bundle` (at most [`BUNDLE`]; a bundle is one
    /// item, so holding costs about a write unit per kilobyte of messages, not one per
    /// task). A bundle's key is the time and a hash of its tasks, put only if absent: held
    /// again in the same millisecond (a refill putting back what it could not send) it
    /// adds nothing; held again later (a retried batch) it is a second copy, whose
    /// messages a worker finds nothing to claim for and gives their slots back. How many
    /// were new.
    pub async fn hold_tasks(
        &self,
        job_id: &str,
        bundle: usize,
        tasks: &[HeldTask],
    ) -> Result<u32, StoreError> {
        let mut tasks = tasks.to_vec();
        tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        let now = self.now();
        let bundles: Vec<Vec<HeldTask>> = tasks
            .chunks(bundle.clamp(1, BUNDLE))
            .map(<[HeldTask]>::to_vec)
            .collect();
        let put: Vec<u32> = stream::iter(bundles)
            .map(|bundle| async move {
                let ids: Vec<&str> = bundle.iter().map(|t| t.task_id.as_str()).collect();
                // Oldest first within a shard: a query reads bundles in the order they
                // were held.
                let name = format!(
                    "{now:013}-{:016x}",
                    crate::domain::ids::stable_hash(&ids.join("/"))
                );
                let mut item = key(held_pk(job_id, bundle[0].shard), held_sk(&name));
                let wire: Vec<(&str, &str, u32, &str)> = bundle
                    .iter()
                    .map(|t| {
                        (
                            t.task_id.as_str(),
                            t.pool.as_str(),
                            t.shard,
                            t.body.as_str(),
                        )
                    })
                    .collect();
                item.insert(
                    "tasks".into(),
                    s(serde_json::to_string(&wire).unwrap_or_default()),
                );
                item.insert("count".into(), n(bundle.len()));
                let put = send_if(
                    self.ddb
                        .put_item()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        .condition_expression("attribute_not_exists(pk)"),
                )
                .await?;
                Ok::<u32, StoreError>(if put.is_some() {
                    bundle.len() as u32
                } else {
                    0
                })
            })
            .buffer_unordered(HOLD_CONCURRENCY)
            .try_collect()
            .await?;
        let new: u32 = put.iter().sum();
        self.count_held(job_id, i64::from(new)).await?;
        Ok(new)
    }

    async fn count_held(&self, job_id: &str, delta: i64) -> Result<(), StoreError> {
        if delta == 0 {
            return Ok(());
        }
        send(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(slots_key(job_id)))
                .update_expression("ADD held :d SET changed_at = :now")
                .expression_attribute_values(":d", n(delta))
                .expression_attribute_values(":now", n(self.now())),
        )
        .await?;
        Ok(())
    }

    /// Up to `limit` bundles of held tasks of a job, from shard `from` on (round the
    /// shards), [`HELD_WALK_CONCURRENCY`] shards at a time: a job of 128 shards or more
    /// holding a few bundles is found in a few round trips, not a hundred.
    pub async fn held_bundles(
        &self,
        job_id: &str,
        shard_count: u32,
        from: u32,
        limit: usize,
    ) -> Result<Vec<HeldBundle>, StoreError> {
        let mut found = Vec::new();
        let shards = shard_count.max(1);
        let order: Vec<u32> = (0..shards).map(|i| (from + i) % shards).collect();
        for round in order.chunks(HELD_WALK_CONCURRENCY) {
            if found.len() >= limit {
                break;
            }
            let want = i32::try_from(limit - found.len()).unwrap_or(i32::MAX);
            let pages = futures::future::try_join_all(round.iter().map(|&shard| async move {
                let out = send(
                    self.ddb
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("pk = :pk")
                        .expression_attribute_values(":pk", s(held_pk(job_id, shard)))
                        .limit(want)
                        .consistent_read(true),
                )
                .await?;
                Ok::<_, StoreError>((shard, out.items.unwrap_or_default()))
            }))
            .await?;
            for (shard, items) in pages {
                found.extend(items.iter().filter_map(|it| held_bundle_of(shard, it)));
            }
        }
        found.truncate(limit);
        Ok(found)
    }

    /// Take a bundle out to send it: deleted on condition that it is still held, so of
    /// two givers reading it at once only one sends it. Whether this call took it.
    pub async fn unhold_bundle(
        &self,
        job_id: &str,
        bundle: &HeldBundle,
    ) -> Result<bool, StoreError> {
        let gone = send_if(
            self.ddb
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(held_pk(job_id, bundle.shard), bundle.sk.clone())))
                .condition_expression("attribute_exists(pk)"),
        )
        .await?;
        if gone.is_some() {
            self.count_held(job_id, -(bundle.tasks.len() as i64))
                .await?;
        }
        Ok(gone.is_some())
    }

    /// Spend `count` slots on a bundle just taken out: it goes out whole, so the window
    /// may go below zero by less than a bundle. Free slots after.
    pub async fn spend_slots(
        &self,
        job_id: &str,
        window: u32,
        count: u32,
    ) -> Result<i64, StoreError> {
        let out = send(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(slots_key(job_id)))
                .update_expression(
                    "SET slots = if_not_exists(slots, :w) - :k, \
                     slot_limit = if_not_exists(slot_limit, :w), changed_at = :now",
                )
                .expression_attribute_values(":w", n(window))
                .expression_attribute_values(":k", n(count))
                .expression_attribute_values(":now", n(self.now()))
                .return_values(ReturnValue::UpdatedNew),
        )
        .await?;
        Ok(out.attributes().map_or(0, |a| slots_of(a).free))
    }

    /// How many tasks a job holds, counted bundle by bundle (the reconciler's check of
    /// `held`), and the count written back.
    pub async fn recount_held(&self, job_id: &str, shard_count: u32) -> Result<i64, StoreError> {
        let mut total = 0i64;
        for shard in 0..shard_count.max(1) {
            let items = self
                .query_all(|| {
                    self.ddb
                        .query()
                        .key_condition_expression("pk = :pk")
                        .expression_attribute_values(":pk", s(held_pk(job_id, shard)))
                        .projection_expression("#c")
                        .expression_attribute_names("#c", "count")
                        .consistent_read(true)
                })
                .await?;
            total += items
                .iter()
                .map(|it| {
                    Reader::new(it)
                        .opt_n::<i64>("count")
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                })
                .sum::<i64>();
        }
        send(
            self.ddb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(slots_key(job_id)))
                .update_expression("SET held = :h")
                .expression_attribute_values(":h", AttributeValue::N(total.to_string())),
        )
        .await?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(limit: i64, claimed: i64, rate_since: i64) -> Slots {
        Slots {
            limit,
            claimed,
            rate_since,
            ..Slots::default()
        }
    }

    #[test]
    fn a_window_is_about_a_second_of_its_jobs_claims() {
        let p = WindowPolicy::default();
        // 600 claims in 2 s: 300 a second.
        assert_eq!(p.resized(256, &slots(256, 600, 1_000), 3_000), Some(300));
        // 60 a second (the local stack): 60, from 256.
        assert_eq!(p.resized(256, &slots(256, 240, 1), 4_001), Some(128));
        assert_eq!(p.resized(256, &slots(128, 240, 1), 4_001), Some(64));
        assert_eq!(p.resized(256, &slots(64, 240, 1), 4_001), Some(60));
        // 10,000 a second: grows at once, up to the ceiling.
        assert_eq!(p.resized(256, &slots(256, 20_000, 1), 2_001), Some(10_000));
        assert_eq!(
            p.resized(256, &slots(10_000, 200_000, 1), 2_001),
            Some(WINDOW_CEILING)
        );
        // Two seconds of its claims, if asked.
        let two = WindowPolicy { seconds: 2.0 };
        assert_eq!(two.resized(256, &slots(256, 600, 1), 2_001), Some(600));
    }

    #[test]
    fn a_window_shrinks_by_halves_to_its_floor_and_waits_out_its_period() {
        let p = WindowPolicy::default();
        // No claims for a period: halved, not dropped to the floor.
        assert_eq!(p.resized(256, &slots(256, 0, 1), 10_001), Some(128));
        assert_eq!(p.resized(256, &slots(40, 0, 1), 10_001), Some(WINDOW_FLOOR));
        // At its floor with nothing claimed: nothing to write.
        assert_eq!(p.resized(256, &slots(32, 0, 1), 10_001), None);
        // A job that started under the floor may go back down to where it started.
        assert_eq!(p.resized(4, &slots(16, 0, 1), 10_001), Some(8));
        assert_eq!(p.resized(4, &slots(5, 0, 1), 10_001), Some(4));
        // The same size with claims counted: written, so the count starts afresh.
        assert_eq!(p.resized(256, &slots(300, 600, 1), 2_001), Some(300));
        // Before its period is over, before any give-back, or with a fixed policy:
        // left alone.
        assert_eq!(p.resized(256, &slots(256, 600, 1), 1_999), None);
        assert_eq!(p.resized(256, &slots(256, 600, 0), 10_000), None);
        assert_eq!(
            WindowPolicy::FIXED.resized(256, &slots(256, 600, 1), 10_001),
            None
        );
    }
}
