//! The messages a worker holds. A message may carry several tasks (a pack): it stays
//! invisible while any of its tasks is held or running here, and is deleted once every
//! one is accounted for: run and recorded, found to need nothing, or handed back in a
//! message of its own. If any of them must run later instead (another worker's live
//! lease, a claim or a result write that failed), the message is not deleted: the worker
//! stops extending it and it comes back whole, its finished tasks then dropped as any
//! duplicate is. Here too the worker takes deliveries in and hands on what finds no room.

use super::{leases, need, Held, Worker};
use batchplane::queue::{Delivery, Queues, TaskMessage};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A message, as the worker addresses it: its queue's URL and its receipt handle.
pub(super) type Receipt = (String, String);

#[derive(Debug, Default)]
pub(super) struct Messages {
    open: HashMap<Receipt, Open>,
}

#[derive(Debug)]
struct Open {
    tasks: usize,
    /// Tasks not yet accounted for.
    outstanding: usize,
    /// A task of it must run later: the message comes back instead of being deleted.
    come_back: bool,
}

impl Messages {
    /// A message carrying `tasks` tasks was received.
    pub fn received(&mut self, r: Receipt, tasks: usize) {
        self.open.insert(
            r,
            Open {
                tasks,
                outstanding: tasks,
                come_back: false,
            },
        );
    }

    /// One more task rides on a message held here (a chained successor child): the
    /// message is kept until it is accounted for too. False if the message is not held.
    pub fn attach(&mut self, r: &Receipt) -> bool {
        let Some(open) = self.open.get_mut(r) else {
            return false;
        };
        open.tasks += 1;
        open.outstanding += 1;
        true
    }

    /// One task of the message is accounted for. Returns the message to delete once
    /// all of its tasks are and none must run later.
    pub fn handled(&mut self, r: &Receipt) -> Option<Receipt> {
        self.settle(r, false)
    }

    /// One task of the message must run later: the message is left to come back.
    pub fn later(&mut self, r: &Receipt) {
        self.settle(r, true);
    }

    fn settle(&mut self, r: &Receipt, later: bool) -> Option<Receipt> {
        let open = self.open.get_mut(r)?;
        open.outstanding = open.outstanding.saturating_sub(1);
        open.come_back |= later;
        if open.outstanding > 0 {
            return None;
        }
        let come_back = open.come_back;
        self.open.remove(r);
        (!come_back).then(|| r.clone())
    }

    /// Whether all `n` of the message's tasks are still unaccounted for: handing back
    /// that many of them can hand back the message itself.
    pub fn whole(&self, r: &Receipt, n: usize) -> bool {
        self.open
            .get(r)
            .is_some_and(|o| o.outstanding == o.tasks && o.tasks == n)
    }

    /// Forget a message handed back whole (made visible again).
    pub fn forget(&mut self, r: &Receipt) {
        self.open.remove(r);
    }

    /// The messages to keep invisible.
    pub fn open(&self) -> impl Iterator<Item = &Receipt> {
        self.open.keys()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

impl Worker {
    /// Tasks held this long without room go back to the queue for another worker.
    pub(super) async fn give_back_stale(&mut self, hold: Duration, queues: &Queues) {
        let stale = self
            .held
            .iter()
            .take_while(|h| h.since.elapsed() >= hold)
            .count();
        let give_back: Vec<Held> = self.held.drain(..stale).collect();
        self.hand_back(give_back, queues).await;
    }

    /// Hand held tasks back for other workers: a message all of whose tasks are handed
    /// back becomes visible again; the rest of a pack, some of whose tasks this worker
    /// runs, goes out in a message of its own.
    async fn hand_back(&mut self, held: Vec<Held>, queues: &Queues) {
        for (receipt, tasks) in by_message(held) {
            if self.messages.whole(&receipt, tasks.len()) {
                self.messages.forget(&receipt);
                leases::extend_all(queues, vec![receipt], Duration::ZERO).await;
                continue;
            }
            match queues.send_to_url(&receipt.0, &tasks, Duration::ZERO).await {
                Ok(()) => tasks.iter().for_each(|_| self.handled(&receipt)),
                Err(e) => {
                    tracing::warn!(error = %e, tasks = tasks.len(), "handing back part of a pack failed; the pack will come back");
                    tasks.iter().for_each(|_| self.messages.later(&receipt));
                }
            }
        }
    }

    /// One task of a message is accounted for; the message is deleted once all are.
    pub(super) fn handled(&mut self, receipt: &Receipt) {
        if let Some(done) = self.messages.handled(receipt) {
            self.to_delete.push(done);
        }
    }

    /// Hold the delivered tasks. Packs may bring more than `wanted` (the tasks asked
    /// for, and those expected to start within the prefetch horizon): the messages that
    /// lie wholly in what is over go straight back (made visible again), so they do not
    /// wait here while other workers have room. A message part of which was wanted is
    /// kept whole, and what of it finds no room goes on after `--hold-ms`.
    pub(super) async fn on_deliveries(
        &mut self,
        batch: Vec<Delivery>,
        wanted: usize,
        queues: &Queues,
    ) {
        let mut added: Vec<(Receipt, usize)> = Vec::new();
        for d in batch {
            let receipt: Receipt = (d.queue_url, d.receipt_handle);
            if d.tasks.is_empty() {
                tracing::warn!(body = %d.body, "unreadable message dropped");
                self.to_delete.push(receipt);
                continue;
            }
            if let Some(m) = d.tasks.iter().find(|m| !self.slots.could_ever_fit(need(m))) {
                tracing::warn!(job_id = %m.job_id, task_id = %m.task_id, cpu_milli = m.cpu_milli, memory_mib = m.memory_mib, gpu = m.gpu,
                    "task is larger than this worker; leaving it for a bigger one");
                let _ = queues
                    .extend(
                        &receipt.0,
                        std::slice::from_ref(&receipt.1),
                        Duration::from_secs(5),
                    )
                    .await;
                continue;
            }
            self.messages.received(receipt.clone(), d.tasks.len());
            self.last_need = d.tasks.last().map(need);
            added.push((receipt.clone(), d.tasks.len()));
            let since = Instant::now();
            self.held.extend(d.tasks.into_iter().map(|message| Held {
                receipt: receipt.clone(),
                message,
                since,
            }));
        }
        let mut over = added
            .iter()
            .map(|(_, n)| n)
            .sum::<usize>()
            .saturating_sub(wanted);
        let mut back = 0;
        for (_, n) in added.iter().rev() {
            if *n > over {
                break;
            }
            over -= n;
            back += n;
        }
        if back > 0 {
            let tail: Vec<Held> = self.held.split_off(self.held.len() - back).into();
            self.hand_back(tail, queues).await;
        }
    }

    /// Take no more work; give back what is held so other workers start it now.
    pub(super) async fn drain(&mut self, queues: &Queues) {
        self.draining = true;
        let held: Vec<Held> = self.held.drain(..).collect();
        self.hand_back(held, queues).await;
    }
}

/// Held tasks grouped by their message, in the order the messages first appear.
pub(super) fn by_message(held: Vec<Held>) -> Vec<(Receipt, Vec<TaskMessage>)> {
    let mut out: Vec<(Receipt, Vec<TaskMessage>)> = Vec::new();
    for h in held {
        match out.iter_mut().find(|(r, _)| *r == h.receipt) {
            Some((_, tasks)) => tasks.push(h.message),
            None => out.push((h.receipt, vec![h.message])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: &str) -> Receipt {
        ("q".into(), n.into())
    }

    #[test]
    fn a_pack_is_deleted_once_all_its_tasks_are_handled() {
        let mut m = Messages::default();
        m.received(r("a"), 3);
        assert!(m.whole(&r("a"), 3));
        assert_eq!(m.handled(&r("a")), None);
        assert!(!m.whole(&r("a"), 2), "one is already handled");
        assert_eq!(m.handled(&r("a")), None);
        assert_eq!(m.handled(&r("a")), Some(r("a")));
        assert!(m.is_empty());
        assert_eq!(m.handled(&r("a")), None, "a stray report changes nothing");
    }

    #[test]
    fn a_pack_with_a_task_for_later_comes_back_instead() {
        let mut m = Messages::default();
        m.received(r("a"), 2);
        m.received(r("b"), 1);
        m.later(&r("a"));
        assert_eq!(
            m.open().count(),
            2,
            "still kept invisible while a task runs"
        );
        assert_eq!(m.handled(&r("a")), None);
        assert_eq!(m.open().count(), 1, "no longer extended: it comes back");
        assert_eq!(m.handled(&r("b")), Some(r("b")));
    }

    #[test]
    fn a_message_carrying_a_chained_task_is_kept_until_that_one_is_handled() {
        let mut m = Messages::default();
        m.received(r("a"), 1);
        assert!(m.attach(&r("a")), "the message is held");
        assert_eq!(
            m.handled(&r("a")),
            None,
            "its own task is done, the chained one is not"
        );
        assert!(
            !m.whole(&r("a"), 1),
            "handing the chained one back is not the whole message"
        );
        assert_eq!(m.handled(&r("a")), Some(r("a")));
        assert!(
            !m.attach(&r("a")),
            "nothing rides on a message no longer held"
        );
        m.received(r("b"), 1);
        assert!(m.attach(&r("b")));
        m.handled(&r("b"));
        m.later(&r("b"));
        assert!(
            m.is_empty(),
            "the chained one must run later: the message comes back"
        );
    }

    #[test]
    fn a_message_handed_back_whole_is_forgotten() {
        let mut m = Messages::default();
        m.received(r("a"), 2);
        assert!(!m.whole(&r("a"), 1), "only part of it");
        m.forget(&r("a"));
        assert!(m.is_empty());
    }
}
