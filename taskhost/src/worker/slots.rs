//! The worker's slots: what it offers (CPU, memory, GPUs), what its started tasks take,
//! and which waiting work fits. Pure: the worker loop asks here, then acts. Every "does
//! it fit" question the worker has is answered by [`Tier::fits_in`], in one encoding.

use batchplane::domain::tiers::Tier;

/// At most this many tasks are asked of SQS at once: its receive limit of ten messages,
/// each a full pack.
pub const MAX_RECEIVE: usize = 10 * batchplane::queue::PACK;

/// What the worker offers and what its started tasks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    total: Tier,
    used: Tier,
}

impl Slots {
    pub fn new(total: Tier) -> Slots {
        Slots {
            total,
            used: Tier::ZERO,
        }
    }

    pub fn total(&self) -> Tier {
        self.total
    }

    pub fn used(&self) -> Tier {
        self.used
    }

    /// Whether a task this large could ever run here (else it is left for a bigger worker).
    pub fn could_ever_fit(&self, need: Tier) -> bool {
        need.fits_in(self.total)
    }

    /// Whether a task this large fits beside what runs now.
    pub fn fits_now(&self, need: Tier) -> bool {
        need.fits_in(self.total.minus(self.used))
    }

    /// A task starts: its resources are in use.
    pub fn take(&mut self, need: Tier) {
        self.used = self.used.plus(need);
    }

    /// A task's process ended: its resources are free.
    pub fn give_back(&mut self, need: Tier) {
        self.used = self.used.minus(need);
    }

    /// How many of `queue`'s tasks, from the front, fit together beside what runs now.
    /// The first that does not fit ends the count: tasks start in the order they came.
    pub fn fitting_now(&self, queue: impl IntoIterator<Item = Tier>) -> usize {
        fitting(self.total.minus(self.used), queue, usize::MAX)
    }

    /// Claiming ahead: how many of `queue`'s tasks, from the front and at most
    /// `at_most`, fit in the room the `ending` tasks (expected to end within a claim's
    /// time) leave, less what the tasks already claimed ahead (`promised`) will take.
    pub fn fitting_ahead(
        &self,
        ending: impl IntoIterator<Item = Tier>,
        promised: impl IntoIterator<Item = Tier>,
        queue: impl IntoIterator<Item = Tier>,
        at_most: usize,
    ) -> usize {
        let freeing = ending.into_iter().fold(Tier::ZERO, Tier::plus);
        let promised = promised.into_iter().fold(Tier::ZERO, Tier::plus);
        let room = self.total.plus(freeing).minus(self.used.plus(promised));
        fitting(room, queue, at_most)
    }

    /// How many tasks the size of `like` fit beside what runs now (the worker's room,
    /// counted in the tasks it has been getting).
    pub fn room_for(&self, like: Tier) -> usize {
        let free = self.total.minus(self.used);
        let by = |have: u64, each: u64| have.checked_div(each).map_or(usize::MAX, |n| n as usize);
        by(free.cpu_milli.into(), like.cpu_milli.into())
            .min(by(free.memory_mib, like.memory_mib))
            .min(by(free.gpu.into(), like.gpu.into()))
            .min(MAX_RECEIVE)
    }

    /// Roughly one message per free vCPU, and one while any CPU and memory are free.
    pub fn free_vcpus(&self) -> usize {
        if self.used.cpu_milli >= self.total.cpu_milli
            || self.used.memory_mib >= self.total.memory_mib
        {
            0
        } else {
            ((self.total.cpu_milli - self.used.cpu_milli) / 1000).max(1) as usize
        }
    }
}

fn fitting(mut room: Tier, queue: impl IntoIterator<Item = Tier>, at_most: usize) -> usize {
    let mut n = 0;
    for need in queue {
        if n == at_most || !need.fits_in(room) {
            break;
        }
        room = room.minus(need);
        n += 1;
    }
    n
}

/// How many tasks to ask SQS for, given the `room` (in tasks) the worker has now. A
/// worker with room asks for exactly that (less what it holds): asking for more would
/// hoard work other workers could start now. A full one holds up to `prefetch` for its
/// next free slots. A draining one asks for none.
pub fn tasks_wanted(draining: bool, room: usize, held: usize, prefetch: usize) -> usize {
    if draining {
        0
    } else if room > 0 {
        room.saturating_sub(held).min(MAX_RECEIVE)
    } else {
        prefetch.saturating_sub(held).min(MAX_RECEIVE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(cpu: f64, memory_mib: u64, gpu: u32) -> Tier {
        Tier {
            cpu_milli: (cpu * 1000.0) as u32,
            memory_mib,
            gpu,
        }
    }

    #[test]
    fn tasks_take_and_give_back_their_resources() {
        let mut s = Slots::new(t(4.0, 8192, 1));
        assert!(s.fits_now(t(4.0, 8192, 1)));
        s.take(t(3.0, 1024, 0));
        assert!(s.fits_now(t(1.0, 7168, 1)));
        assert!(!s.fits_now(t(1.5, 512, 0)), "CPU binds");
        assert!(!s.fits_now(t(0.5, 8000, 0)), "memory binds");
        s.take(t(0.5, 512, 1));
        assert!(!s.fits_now(t(0.1, 1, 1)), "the GPU is taken");
        s.give_back(t(0.5, 512, 1));
        s.give_back(t(3.0, 1024, 0));
        assert_eq!(s.used(), Tier::ZERO);
    }

    #[test]
    fn a_task_larger_than_the_worker_never_fits() {
        let s = Slots::new(t(2.0, 4096, 0));
        assert!(s.could_ever_fit(t(2.0, 4096, 0)));
        assert!(!s.could_ever_fit(t(2.0, 4096, 1)));
        assert!(!s.could_ever_fit(t(2.5, 1024, 0)));
        assert_eq!(s.fitting_now([t(4.0, 1, 0), t(1.0, 1, 0)]), 0);
    }

    #[test]
    fn waiting_tasks_start_in_order_until_one_does_not_fit() {
        let mut s = Slots::new(t(4.0, 16384, 0));
        s.take(t(1.0, 1024, 0));
        // 3 vCPUs free: the first 2-vCPU task fits, the second does not, and the
        // 1-vCPU task behind it waits its turn.
        assert_eq!(
            s.fitting_now([t(2.0, 1024, 0), t(2.0, 1024, 0), t(1.0, 1024, 0)]),
            1
        );
        assert_eq!(s.fitting_now([t(1.0, 1024, 0); 5]), 3);
        assert_eq!(s.fitting_now([]), 0);
    }

    #[test]
    fn claims_ahead_count_what_ends_soon_and_what_is_already_promised() {
        let mut s = Slots::new(t(2.0, 4096, 0));
        s.take(t(1.0, 1024, 0));
        s.take(t(1.0, 1024, 0));
        let next = [t(1.0, 1024, 0), t(1.0, 1024, 0)];
        // Full: nothing ends soon, nothing can be claimed ahead.
        assert_eq!(s.fitting_ahead([], [], next, 2), 0);
        // One slot frees within a claim's time: one task is claimed for it.
        assert_eq!(s.fitting_ahead([t(1.0, 1024, 0)], [], next, 2), 1);
        // ... unless a task claimed ahead already waits for that slot.
        assert_eq!(
            s.fitting_ahead([t(1.0, 1024, 0)], [t(1.0, 1024, 0)], next, 2),
            0
        );
        // Both end soon, but only one claim is wanted.
        assert_eq!(s.fitting_ahead([t(1.0, 1024, 0); 2], [], next, 1), 1);
        // More promised than frees: no room, not a negative amount.
        assert_eq!(s.fitting_ahead([], [t(2.0, 4096, 0)], [t(0.0, 0, 0)], 1), 1);
        assert_eq!(s.fitting_ahead([], [t(2.0, 4096, 0)], [t(0.1, 1, 0)], 1), 0);
    }

    #[test]
    fn free_vcpus_rounds_down_but_a_free_fraction_still_asks_for_one() {
        let mut s = Slots::new(t(4.0, 8192, 0));
        assert_eq!(s.free_vcpus(), 4);
        s.take(t(3.5, 1024, 0));
        assert_eq!(s.free_vcpus(), 1);
        s.take(t(0.5, 0, 0));
        assert_eq!(s.free_vcpus(), 0, "no CPU left");
        let mut m = Slots::new(t(4.0, 1024, 0));
        m.take(t(1.0, 1024, 0));
        assert_eq!(m.free_vcpus(), 0, "no memory left");
    }

    #[test]
    fn room_is_counted_in_tasks_like_the_last_by_whatever_runs_out_first() {
        let mut s = Slots::new(t(8.0, 4096, 0));
        assert_eq!(s.room_for(t(0.5, 512, 0)), 8, "memory binds before CPU");
        assert_eq!(s.room_for(t(2.0, 64, 0)), 4, "CPU binds");
        assert_eq!(s.room_for(t(1.0, 64, 1)), 0, "no GPU here");
        assert_eq!(s.room_for(Tier::ZERO), MAX_RECEIVE);
        s.take(t(0.5, 3584, 0));
        assert_eq!(s.room_for(t(0.5, 512, 0)), 1);
    }

    #[test]
    fn a_worker_asks_for_its_room_or_its_prefetch_and_a_draining_one_for_nothing() {
        assert_eq!(tasks_wanted(true, 4, 0, 4), 0);
        assert_eq!(tasks_wanted(false, 4, 1, 4), 3);
        assert_eq!(tasks_wanted(false, 500, 0, 4), MAX_RECEIVE);
        assert_eq!(tasks_wanted(false, 0, 1, 4), 3, "a full worker prefetches");
        assert_eq!(tasks_wanted(false, 0, 5, 4), 0);
    }
}
