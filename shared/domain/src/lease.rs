//! How a worker's lease on an attempt fences it. A lease lasts until `lease_expires`
//! (milliseconds since the epoch, by the holder's clock when it last renewed). The
//! holder stops the attempt by `lease_expires - margin` if it has not renewed by then,
//! and no one takes the task over before `lease_expires + margin` by their own clock:
//! between the two, the old attempt has `2 × margin` (less the clocks' skew) to be
//! killed, so an attempt and its takeover never run at once.

use std::time::Duration;

/// The fencing margin for a lease of `lease`: a sixth of it, between 500 ms and 10 s.
/// Heartbeats go out every third of a lease, so a lease is fenced only after two
/// renewals in a row have failed.
pub fn fence_margin(lease: Duration) -> Duration {
    (lease / 6).clamp(Duration::from_millis(500), Duration::from_secs(10))
}

/// When the holder of a lease expiring at `lease_expires` must have stopped its attempt.
pub fn fence_at(lease_expires: i64, lease: Duration) -> i64 {
    lease_expires - fence_margin(lease).as_millis() as i64
}

/// The first moment (by the taker's clock) a lease expiring at `lease_expires` may be
/// taken over.
pub fn takeover_after(lease_expires: i64, lease: Duration) -> i64 {
    lease_expires + fence_margin(lease).as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_sixth_of_the_lease_within_bounds() {
        assert_eq!(
            fence_margin(Duration::from_secs(30)),
            Duration::from_secs(5)
        );
        assert_eq!(
            fence_margin(Duration::from_secs(3)),
            Duration::from_millis(500)
        );
        assert_eq!(
            fence_margin(Duration::from_secs(600)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn the_holder_stops_before_anyone_may_take_over() {
        let lease = Duration::from_secs(30);
        let expires = 1_000_000;
        assert!(fence_at(expires, lease) < expires);
        assert!(takeover_after(expires, lease) > expires);
        assert_eq!(
            takeover_after(expires, lease) - fence_at(expires, lease),
            10_000
        );
    }
}
