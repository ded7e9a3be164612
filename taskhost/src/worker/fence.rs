//! Self-fencing: an attempt is stopped by `fence_at(lease_expires)` unless its lease is
//! renewed first (see [`batchplane::domain::lease`]). The worker watches the time itself
//! and keeps it in a file the shim watches too, so the attempt dies on time even when
//! the worker is stopped or stalled.

use batchplane::store::now_ms;
use std::time::Duration;
use tokio::sync::watch;

/// Resolves when the attempt's lease, as last renewed, is due to be fenced
/// ([`batchplane::domain::lease::fence_at`]); a renewal moves the time on.
pub(super) async fn fence_due(lease: &mut watch::Receiver<i64>, length: Duration) {
    loop {
        let at = batchplane::domain::lease::fence_at(*lease.borrow_and_update(), length);
        let wait = at - now_ms();
        if wait <= 0 {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
            renewed = lease.changed() => {
                if renewed.is_err() {
                    // No more renewals can come: the last deadline stands.
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                }
            }
        }
    }
}

/// Write the shim's fence file: the time (ms) by which the attempt must be gone unless
/// renewed, `fence_at(lease_expires)`. Written whole and renamed into place, so the
/// shim never reads half a number.
pub(super) fn write_fence(
    path: &std::path::Path,
    lease_expires: i64,
    lease: Duration,
) -> Result<(), String> {
    let at = batchplane::domain::lease::fence_at(lease_expires, lease);
    let tmp = path.with_extension("fence.tmp");
    std::fs::create_dir_all(path.parent().unwrap_or(path))
        .and_then(|()| std::fs::write(&tmp, at.to_string()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write the attempt's fence {}: {e}", path.display()))
}
