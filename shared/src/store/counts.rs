//! A job's task counts: one delta item per stream batch (each record counted once, see
//! [`Store::add_batch_counts`]), summed on read and folded into the job's running total.

use super::item::*;
use super::request::{send, send_unless_cancelled};
use super::{Store, StoreError};
use crate::domain::count_history::CountHistory;
use crate::domain::{TaskCounts, Usage};
use aws_sdk_dynamodb::types::builders::PutBuilder;
use aws_sdk_dynamodb::types::AttributeValue;

/// Whether stream sequence number `a` comes after `b` (both decimal, of one shard).
pub fn sequence_after(a: &str, b: &str) -> bool {
    (a.len(), a) > (b.len(), b)
}

/// How long a batch's count item is kept as it is before it may be folded: a retried
/// batch finds it and adds only what it has not counted yet.
const FOLD_MIN_AGE_MS: i64 = 15 * 60 * 1000;

/// The item a job's folded count history is kept in.
pub const COUNT_HISTORY_SK: &str = "HISTORY#counts";

/// A job's ended-task tally ([`Store::add_ended`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndedTally {
    /// Tasks seen ending, counting a retried batch's again.
    pub ended: u64,
    /// Checked against the job's counts once: endings counted before the tally began
    /// are in it. Until then it says nothing.
    pub checked: bool,
}

/// One stream record's part of a job's counts.
#[derive(Debug, Clone, Default)]
pub struct RecordCounts {
    pub sequence_number: String,
    pub counts: TaskCounts,
    pub usage: Usage,
}

fn sum(parts: &[&RecordCounts]) -> (TaskCounts, Usage) {
    let mut counts = TaskCounts::default();
    let mut usage = Usage::default();
    for p in parts {
        counts.merge(&p.counts);
        usage.add(&p.usage);
    }
    (counts, usage)
}

/// One record's part of a family of batch delta items (a job's counts, its counts by
/// group): what the per-record protocol of [`Store::add_batch_deltas`] needs of it.
pub(crate) trait BatchPart {
    fn sequence_number(&self) -> &str;
}

impl BatchPart for RecordCounts {
    fn sequence_number(&self) -> &str {
        &self.sequence_number
    }
}

/// Attribute deltas to add: name and number.
pub(crate) type Deltas = Vec<(String, AttributeValue)>;

/// Counts and usage as attributes (counts of zero too, where `keep_zero`).
fn attributes(counts: &TaskCounts, usage: &Usage, keep_zero: bool) -> Deltas {
    let mut out: Deltas = counts
        .0
        .iter()
        .filter(|(_, d)| keep_zero || **d != 0)
        .map(|(st, d)| (counts_attr(*st), n(*d)))
        .collect();
    if !usage.is_empty() {
        for (field, v) in Usage::FIELDS.iter().zip(usage.values()) {
            out.push((usage_attr(field), n(v)));
        }
    }
    out
}

/// The counts' and usage's deltas of some records, leaving out what adds nothing.
fn count_deltas(parts: &[&RecordCounts]) -> Deltas {
    let (counts, usage) = sum(parts);
    attributes(&counts, &usage, false)
}

impl Store {
    /// Add a stream batch's count deltas for a job, each record's once (see
    /// [`Store::add_batch_deltas`]). Whether anything was added.
    pub async fn add_batch_counts(
        &self,
        job_id: &str,
        batch_start: &str,
        parts: &[RecordCounts],
    ) -> Result<bool, StoreError> {
        let k = key(job_pk(job_id), format!("{COUNTS_PREFIX}{batch_start}"));
        self.add_batch_deltas(
            k,
            parts,
            count_deltas,
            |_, current, v| add_numbers(current, v),
            "UpdateItem (batch counts)",
        )
        .await
    }

    /// Add one stream batch's deltas to the item `k`, each record's once (`combine`
    /// folds a value into what the item holds: a sum for counts). The batch's
    /// item is keyed by its first record and remembers the last record it counted
    /// (`upto`): a batch retried from the same record (a function error, a duplicate
    /// invocation) adds only the records past that, however far each try got. Records
    /// are in stream order. Whether anything was added.
    pub(crate) async fn add_batch_deltas<P: BatchPart>(
        &self,
        k: Item,
        parts: &[P],
        deltas: impl Fn(&[&P]) -> Deltas,
        combine: fn(&str, Option<&AttributeValue>, &AttributeValue) -> AttributeValue,
        operation: &'static str,
    ) -> Result<bool, StoreError> {
        let Some(last) = parts.last().map(|p| p.sequence_number().to_string()) else {
            return Ok(false);
        };
        let all: Vec<&P> = parts.iter().collect();
        let mut it = k.clone();
        it.extend(deltas(&all));
        it.insert("upto".into(), s(&last));
        it.insert("at".into(), n(self.now()));
        if self.put_if_absent(it).await? {
            return Ok(true);
        }
        for _ in 0..super::request::CONFLICT_RETRIES {
            let Some(current) = self.read_item(k.clone()).await? else {
                // Folded since: it was old, and what it counted is in the base.
                return Ok(false);
            };
            // An item without `upto` predates per-record counting: a retry of it
            // counted everything its key named.
            let Some(upto) = Reader::new(&current).opt_s("upto")? else {
                return Ok(false);
            };
            let rest: Vec<&P> = parts
                .iter()
                .filter(|p| sequence_after(p.sequence_number(), &upto))
                .collect();
            if rest.is_empty() {
                return Ok(false);
            }
            // The item as read, plus what the rest adds, put back only if no other try
            // moved it meanwhile (a put, not an ADD: a batch may name hundreds of
            // attributes, more than one update expression holds).
            let mut next = current.clone();
            for (name, v) in deltas(&rest) {
                let sum = combine(&name, current.get(&name), &v);
                next.insert(name, sum);
            }
            next.insert("upto".into(), s(&last));
            let written = super::request::send_if(
                self.ddb
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(next))
                    .condition_expression("upto = :upto")
                    .expression_attribute_values(":upto", s(&upto)),
            )
            .await?;
            if written.is_some() {
                return Ok(true);
            }
        }
        Err(StoreError::Unprocessed {
            operation,
            remaining: parts.len(),
        })
    }

    /// A job's counts of tasks by state and its resource usage: the sum of its batch
    /// count items. Returns how many items were summed too, so callers can fold them
    /// when they pile up.
    pub async fn job_counts(&self, job_id: &str) -> Result<(TaskCounts, Usage, usize), StoreError> {
        let mut total = TaskCounts::default();
        let mut usage = Usage::default();
        let items = self.partition_items(&job_pk(job_id), COUNTS_PREFIX).await?;
        for it in &items {
            total.merge(&counts_from_item(it));
            usage.add(&usage_from_item(it));
        }
        let items = items.len();
        Ok((total, usage, items))
    }

    /// Add `n_ended` tasks seen ending to a job's ended-task tally, and return it.
    ///
    /// Once checked ([`EndedTally::checked`]), the tally is at least how many of the
    /// job's tasks have ended after every batch that counted an ending has added it: a
    /// batch adds after writing its counts, and adds again if it is retried (never less
    /// than once, maybe more). So a tally below the job's total says it cannot be
    /// complete without reading its count items. A fast job piles those up, one a
    /// batch, for `FOLD_MIN_AGE_MS`, and reading them all at every batch would read a
    /// million-task job's thousands of times over.
    pub async fn add_ended(&self, job_id: &str, n_ended: u64) -> Result<EndedTally, StoreError> {
        self.update_tally(job_id, n_ended, false).await
    }

    /// Check a job's tally against its counts as read (`ended` tasks): add what it
    /// lacks (endings counted before it began) and mark it checked.
    pub async fn check_tally(
        &self,
        job_id: &str,
        tally: &EndedTally,
        ended: u64,
    ) -> Result<EndedTally, StoreError> {
        self.update_tally(job_id, ended.saturating_sub(tally.ended), true)
            .await
    }

    async fn update_tally(
        &self,
        job_id: &str,
        add: u64,
        checked: bool,
    ) -> Result<EndedTally, StoreError> {
        let mut req = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(ended_pk(job_id), "E".into())))
            .expression_attribute_values(":n", n(add))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew);
        req = if checked {
            req.update_expression("ADD ended :n SET checked = :t")
                .expression_attribute_values(":t", AttributeValue::Bool(true))
        } else {
            req.update_expression("ADD ended :n")
        };
        let out = send(req).await?;
        let item = out.attributes().cloned().unwrap_or_default();
        let r = Reader::new(&item);
        Ok(EndedTally {
            ended: r.req_n("ended")?,
            checked: r.bool("checked"),
        })
    }

    /// Fold batch count items into `C#base`, 98 at a time, each fold one transaction, so
    /// reading a job's counts stays a small query however long the job runs. The same
    /// transaction adds what it folds to the job's count history (`HISTORY#counts`,
    /// `domain::count_history`), by when each batch was counted; the history's put is
    /// conditional on its version as read, so of two folds at once neither loses the
    /// other's part.
    pub async fn fold_counts(&self, job_id: &str) -> Result<(), StoreError> {
        let (history, history_version) = self.folded_count_history(job_id).await?;
        let history_key = key(job_pk(job_id), COUNT_HISTORY_SK.into());
        self.fold_deltas(
            &job_pk(job_id),
            COUNTS_PREFIX,
            COUNTS_BASE_SK,
            |base, batch| {
                let mut counts = base.map(counts_from_item).unwrap_or_default();
                let mut usage = base.map(usage_from_item).unwrap_or_default();
                let mut folded = history.clone();
                for it in batch {
                    let deltas = counts_from_item(it);
                    counts.merge(&deltas);
                    usage.add(&usage_from_item(it));
                    if let Ok(Some(at)) = Reader::new(it).opt_n::<i64>("at") {
                        folded.add(at, &deltas);
                    }
                }
                let mut item = history_key.clone();
                item.insert(
                    "hist".into(),
                    s(serde_json::to_string(&folded).unwrap_or_default()),
                );
                item.insert("ver".into(), n(history_version.unwrap_or(0) + 1));
                let put = match history_version {
                    Some(v) => aws_sdk_dynamodb::types::Put::builder()
                        .condition_expression("ver = :ver")
                        .expression_attribute_values(":ver", n(v)),
                    None => aws_sdk_dynamodb::types::Put::builder()
                        .condition_expression("attribute_not_exists(pk)"),
                };
                (
                    attributes(&counts, &usage, true),
                    Some(put.set_item(Some(item))),
                )
            },
        )
        .await
    }

    /// Every item of partition `pk` whose sort key begins with `prefix`, read
    /// consistently.
    pub(crate) async fn partition_items(
        &self,
        pk: &str,
        prefix: &str,
    ) -> Result<Vec<Item>, StoreError> {
        self.query_all(|| {
            self.ddb
                .query()
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(pk))
                .expression_attribute_values(":prefix", s(prefix))
                .consistent_read(true)
        })
        .await
    }

    /// What the folds have kept of a job's count history, and its version.
    async fn folded_count_history(
        &self,
        job_id: &str,
    ) -> Result<(CountHistory, Option<i64>), StoreError> {
        let k = key(job_pk(job_id), COUNT_HISTORY_SK.into());
        let Some(item) = self.read_item(k).await? else {
            return Ok((CountHistory::default(), None));
        };
        let r = Reader::new(&item);
        let history = match r.opt_s("hist")? {
            Some(json) => serde_json::from_str(&json).map_err(|e| r.bad("hist", &e.to_string()))?,
            None => CountHistory::default(),
        };
        Ok((history, r.opt_n("ver")?))
    }

    /// A job's counts over its whole life: what the folds kept, and the batch items
    /// not folded yet, each at the time it was counted. Counts no history accounts for
    /// (folded before histories were kept) are put at `since`, the job's creation.
    pub async fn job_count_history(
        &self,
        job_id: &str,
        since: i64,
    ) -> Result<CountHistory, StoreError> {
        let (mut history, _) = self.folded_count_history(job_id).await?;
        let items = self.partition_items(&job_pk(job_id), COUNTS_PREFIX).await?;
        let mut total = TaskCounts::default();
        for it in &items {
            let deltas = counts_from_item(it);
            total.merge(&deltas);
            let is_base =
                matches!(it.get("sk"), Some(AttributeValue::S(sk)) if sk == COUNTS_BASE_SK);
            if is_base {
                continue;
            }
            if let Some(at) = Reader::new(it).opt_n::<i64>("at")? {
                history.add(at, &deltas);
            }
        }
        let mut unaccounted = total;
        for (st, d) in history.total().0 {
            unaccounted.add(st, -d);
        }
        history.add(since, &unaccounted);
        Ok(history)
    }

    /// Fold up to 98 of the batch items under `prefix` in a job's partition `pk` that
    /// are old enough into its base item `base_sk`, in one transaction: `total` gives the base's attributes from
    /// the base as read (none at first) and the batch items, and perhaps one more item
    /// to put in the same transaction (with its own condition). The base is put whole, on
    /// the condition that it is still the version read, and each batch item is deleted
    /// only as it was read (a retried batch may have added to it since): of two folds at
    /// once, one wins and the other changes nothing.
    pub(crate) async fn fold_deltas(
        &self,
        pk: &str,
        prefix: &str,
        base_sk: &str,
        total: impl Fn(Option<&Item>, &[&Item]) -> (Deltas, Option<PutBuilder>),
    ) -> Result<(), StoreError> {
        let out = send(
            self.ddb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :c)")
                .expression_attribute_values(":pk", s(pk))
                .expression_attribute_values(":c", s(prefix))
                .consistent_read(true)
                .limit(100),
        )
        .await?;
        let young = self.now() - FOLD_MIN_AGE_MS;
        let batch: Vec<&Item> = out
            .items()
            .iter()
            .filter(|it| !matches!(it.get("sk"), Some(AttributeValue::S(sk)) if sk == base_sk))
            .filter(|it| {
                Reader::new(it)
                    .opt_n::<i64>("at")
                    .ok()
                    .flatten()
                    .is_none_or(|at| at < young)
            })
            .take(98)
            .collect();
        if batch.len() < 2 {
            return Ok(());
        }
        let base_key = key(pk.to_string(), base_sk.into());
        let base = self.read_item(base_key.clone()).await?;
        let version = match &base {
            Some(b) => Reader::new(b).opt_n::<i64>("ver")?,
            None => None,
        };
        let mut next = base_key;
        let (attributes, also) = total(base.as_ref(), &batch);
        next.extend(attributes);
        next.insert("ver".into(), n(version.unwrap_or(0) + 1));
        use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem};
        let build = |source| StoreError::Build {
            operation: "TransactWriteItems",
            source,
        };
        let put = match version {
            Some(v) => Put::builder()
                .condition_expression("ver = :ver")
                .expression_attribute_values(":ver", n(v)),
            // No base yet, or one from before bases had versions.
            None => Put::builder().condition_expression("attribute_not_exists(ver)"),
        };
        let mut items = vec![TransactWriteItem::builder()
            .put(
                put.table_name(&self.table)
                    .set_item(Some(next))
                    .build()
                    .map_err(build)?,
            )
            .build()];
        if let Some(put) = also {
            items.push(
                TransactWriteItem::builder()
                    .put(put.table_name(&self.table).build().map_err(build)?)
                    .build(),
            );
        }
        for it in &batch {
            let k = key(pk.to_string(), Reader::new(it).req_s("sk")?);
            let delete = match Reader::new(it).opt_s("upto")? {
                Some(upto) => Delete::builder()
                    .condition_expression("upto = :upto")
                    .expression_attribute_values(":upto", s(upto)),
                None => Delete::builder().condition_expression("attribute_exists(pk)"),
            };
            items.push(
                TransactWriteItem::builder()
                    .delete(
                        delete
                            .table_name(&self.table)
                            .set_key(Some(k))
                            .build()
                            .map_err(build)?,
                    )
                    .build(),
            );
        }
        // Cancelled: another fold won the race; the counts are intact either way.
        send_unless_cancelled(
            self.ddb
                .transact_write_items()
                .set_transact_items(Some(items)),
        )
        .await?;
        Ok(())
    }
}
