//! Keeping a task from its neighbours and from its worker.
//!
//! Each attempt runs as an unprivileged uid of its own (and the same gid, with no
//! supplementary groups), leased from a configured range for as long as the attempt
//! runs: another attempt's processes, `/proc/<pid>/environ` and files are another
//! user's, and so are the taskhost's (root). The attempt's working directory is its own
//! (mode 0700); its log files are the worker's (0600), written through descriptors the
//! task inherits, so no other attempt can open them. The cgroup it runs in is made and
//! owned by root: the task can neither raise its limits nor move itself out.
//!
//! A uid is leased by holding an exclusive `flock` on `<lock dir>/<uid>`: every taskhost
//! on the host shares the lock dir, so two attempts never share a uid even across
//! workers, and a lease ends with its holder, however it exits.
//!
//! A taskhost that is not root cannot switch uids: it runs tasks as itself, says so once
//! in its log, and records `isolation: none` on every attempt.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The uids attempts run as, `START-END` inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub start: u32,
    pub end: u32,
}

impl std::str::FromStr for UidRange {
    type Err = String;
    fn from_str(s: &str) -> Result<UidRange, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected START-END, e.g. 100000-165535"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|e| format!("{s:?}: {v:?} is not a uid ({e})"))
        };
        let (start, end) = (parse(a)?, parse(b)?);
        if start == 0 || start > end {
            return Err(format!(
                "{s:?}: the range must not include root (0) and must not be empty"
            ));
        }
        Ok(UidRange { start, end })
    }
}

/// `--task-uids`: a range, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskUids(pub Option<UidRange>);

/// How this worker isolates its tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// Each attempt runs as a uid of `range`, leased under `lock_dir`.
    Uids { range: UidRange, lock_dir: PathBuf },
    /// Tasks run as the taskhost's own user; `why` says why.
    None { why: String },
}

/// What an attempt records of how it was isolated.
pub const ISOLATION_UID: &str = "uid";
pub const ISOLATION_NONE: &str = "none";

impl Isolation {
    /// Uids from `range` where this process may switch to them (it is root) and the lock
    /// dir is its own; else none, with the reason.
    pub fn detect(range: Option<UidRange>, lock_dir: &Path) -> Isolation {
        let Some(range) = range else {
            return Isolation::None {
                why: "turned off (--task-uids none)".into(),
            };
        };
        if !nix::unistd::geteuid().is_root() {
            return Isolation::None {
                why: "the taskhost is not root, so it cannot run tasks as other users".into(),
            };
        }
        match own_private_dir(lock_dir) {
            Ok(()) => Isolation::Uids {
                range,
                lock_dir: lock_dir.to_path_buf(),
            },
            Err(why) => Isolation::None { why },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Isolation::Uids { .. } => ISOLATION_UID,
            Isolation::None { .. } => ISOLATION_NONE,
        }
    }

    /// Lease a uid no other attempt on this host holds; `None` without isolation.
    pub fn lease(&self) -> Result<Option<UidLease>, String> {
        let Isolation::Uids { range, lock_dir } = self else {
            return Ok(None);
        };
        let span = u64::from(range.end - range.start) + 1;
        // Start somewhere random, so workers starting together do not all contend for
        // the first uids.
        let offset = u64::from(uuid::Uuid::new_v4().as_u128() as u32) % span;
        for i in 0..span {
            let uid = range.start + ((offset + i) % span) as u32;
            let path = lock_dir.join(uid.to_string());
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                return Ok(Some(UidLease { uid, _lock: lock }));
            }
        }
        Err(format!(
            "every uid of {}-{} is in use by a running attempt",
            range.start, range.end
        ))
    }
}

/// A uid held for one attempt; released when dropped (or when its holder dies).
#[derive(Debug)]
pub struct UidLease {
    pub uid: u32,
    _lock: Flock<File>,
}

/// Make `dir` (and its parents) if needed, and check it is this process's and no one
/// else's: a lock dir another user could write to would let it steal uids.
fn own_private_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "the uid lock dir {} belongs to uid {}, not this taskhost",
            dir.display(),
            meta.uid()
        ));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("making {} private: {e}", dir.display()))
}

/// Make an attempt's working directory, owned by its uid (when it has one) and private
/// to it.
pub fn make_workdir(dir: &Path, uid: Option<u32>) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    if let Some(uid) = uid {
        std::os::unix::fs::chown(dir, Some(uid), Some(uid))
            .map_err(|e| format!("giving {} to uid {uid}: {e}", dir.display()))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("making {} private: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_ranges_parse_and_never_include_root() {
        assert_eq!(
            "100000-100009".parse::<UidRange>(),
            Ok(UidRange {
                start: 100000,
                end: 100009
            })
        );
        assert!("0-10".parse::<UidRange>().is_err());
        assert!("20-10".parse::<UidRange>().is_err());
        assert!("abc".parse::<UidRange>().is_err());
    }

    #[test]
    fn leases_are_exclusive_until_dropped() {
        let dir = std::env::temp_dir().join(format!("uids-{}", uuid::Uuid::new_v4().simple()));
        let iso = Isolation::Uids {
            range: UidRange {
                start: 200000,
                end: 200001,
            },
            lock_dir: dir.clone(),
        };
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let lease = || match iso.lease() {
            Ok(Some(l)) => l,
            Ok(None) => panic!("a uid range gave no lease"),
            Err(e) => panic!("no lease: {e}"),
        };
        let a = lease();
        let b = lease();
        assert_ne!(a.uid, b.uid);
        assert!(iso.lease().unwrap_err().contains("in use"));
        let freed = a.uid;
        drop(a);
        assert_eq!(lease().uid, freed);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn no_range_or_no_root_means_no_isolation() {
        let dir = std::env::temp_dir();
        assert_eq!(Isolation::detect(None, &dir).name(), ISOLATION_NONE);
    }
}
