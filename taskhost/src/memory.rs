//! Holding each task to its memory limit, so one task running out of memory kills that
//! task and not the worker.
//!
//! Three mechanisms, best first, chosen once when the worker starts:
//! - **cgroup v2**: every attempt gets a child group with `memory.max` (and
//!   `memory.swap.max = 0`, `memory.oom.group = 1`, so the kernel kills the whole task);
//!   `memory.events`' `oom_kill` says whether it ran out. The worker moves itself into a
//!   leaf (`taskhost`) of its own group and enables the memory controller for the
//!   group's children (cgroup v2 lets only a group without processes do that).
//! - **cgroup v1** (hosts whose memory controller is still on the v1 hierarchy): the
//!   same with `memory.limit_in_bytes` and `memory.oom_control`'s `oom_kill`.
//! - **rlimit + RSS polling** where neither is writable (an unprivileged container): the
//!   shim samples the task's resident memory every 100 ms and kills the task when it
//!   passes the limit, and sets `RLIMIT_DATA` as a backstop at twice the limit (at least
//!   the limit + 256 MiB), so an allocation far past the limit fails before the node
//!   suffers. Such a failed allocation usually ends the task with an error of its own
//!   (Python's MemoryError, a C++ bad_alloc) that is not recognised as OutOfMemory; an
//!   allocation that grows into the limit is.
//!
//! The shim puts the task in its group without unsafe code: it moves itself in, starts
//! the task (which inherits the group) and moves itself back out.

use std::path::{Path, PathBuf};

/// What a worker asks for (`--memory-enforcement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preference {
    /// A cgroup where the host allows it, else rlimit + RSS polling.
    Auto,
    /// rlimit + RSS polling even where a cgroup would work.
    Poll,
}

/// How tasks are held to their limit on this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// Task groups are made under `parent`; the shim returns to `home` after starting
    /// the task.
    Cgroup {
        version: u8,
        parent: PathBuf,
        home: PathBuf,
    },
    Poll,
}

impl Mechanism {
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::Cgroup { version: 2, .. } => "cgroup-v2",
            Mechanism::Cgroup { .. } => "cgroup-v1",
            Mechanism::Poll => POLL,
        }
    }

    /// Remove what the worker made for its tasks' groups (when it exits).
    pub fn release(&self) {
        if let Mechanism::Cgroup {
            version: 1, parent, ..
        } = self
        {
            let _ = std::fs::remove_dir(parent);
        }
    }

    /// The shim's `--memory-enforcement` value.
    pub fn to_arg(&self) -> String {
        match self {
            Mechanism::Cgroup {
                version,
                parent,
                home,
            } => format!("cgroup-v{version}:{}:{}", parent.display(), home.display()),
            Mechanism::Poll => POLL.to_string(),
        }
    }

    pub fn from_arg(arg: &str) -> Result<Mechanism, String> {
        if arg == POLL {
            return Ok(Mechanism::Poll);
        }
        let mut parts = arg.splitn(3, ':');
        let version = match parts.next() {
            Some("cgroup-v2") => 2,
            Some("cgroup-v1") => 1,
            _ => {
                return Err(format!(
                    "memory enforcement {arg:?}: expected {POLL} or cgroup-vN:PARENT:HOME"
                ))
            }
        };
        match (parts.next(), parts.next()) {
            (Some(parent), Some(home)) => Ok(Mechanism::Cgroup {
                version,
                parent: parent.into(),
                home: home.into(),
            }),
            _ => Err(format!(
                "memory enforcement {arg:?}: expected cgroup-vN:PARENT:HOME"
            )),
        }
    }
}

pub const POLL: &str = "rlimit+rss-poll";

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

/// This process's group on the cgroup v2 hierarchy, if the memory controller is there.
fn v2_group() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    for mount in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let dir = Path::new(mount).join(path.trim_start_matches('/'));
        let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).ok();
        if controllers.is_some_and(|c| c.split_whitespace().any(|x| x == "memory")) {
            return Some(dir);
        }
    }
    None
}

/// This process's memory group on a cgroup v1 hierarchy.
fn v1_group() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    })?;
    let dir = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
    dir.join("memory.limit_in_bytes").exists().then_some(dir)
}

fn setup_v2(group: &Path) -> Result<Mechanism, String> {
    let home = group.join("taskhost");
    std::fs::create_dir_all(&home).map_err(|e| format!("creating {}: {e}", home.display()))?;
    write(&home.join("cgroup.procs"), &std::process::id().to_string())?;
    let enabled = std::fs::read_to_string(group.join("cgroup.subtree_control")).unwrap_or_default();
    if !enabled.split_whitespace().any(|c| c == "memory") {
        if let Err(e) = write(&group.join("cgroup.subtree_control"), "+memory") {
            // Other processes share the group: give it back as it was.
            let _ = write(&group.join("cgroup.procs"), &std::process::id().to_string());
            return Err(e);
        }
    }
    Ok(Mechanism::Cgroup {
        version: 2,
        parent: group.to_path_buf(),
        home,
    })
}

fn setup_v1(group: &Path) -> Result<Mechanism, String> {
    let parent = group.join(format!("taskhost-{}", std::process::id()));
    std::fs::create_dir_all(&parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    Ok(Mechanism::Cgroup {
        version: 1,
        parent,
        home: group.to_path_buf(),
    })
}

/// Choose the mechanism for this worker; the second value says why a cgroup was not used.
pub fn detect(preference: Preference) -> (Mechanism, Option<String>) {
    if preference == Preference::Poll {
        return (Mechanism::Poll, Some("asked for polling".into()));
    }
    let mut why = Vec::new();
    match v2_group() {
        Some(g) => match setup_v2(&g) {
            Ok(m) => return (m, None),
            Err(e) => why.push(format!("cgroup v2: {e}")),
        },
        None => why.push("cgroup v2: no memory controller in this process's group".into()),
    }
    match v1_group() {
        Some(g) => match setup_v1(&g) {
            Ok(m) => return (m, None),
            Err(e) => why.push(format!("cgroup v1: {e}")),
        },
        None => why.push("cgroup v1: no writable memory hierarchy".into()),
    }
    (Mechanism::Poll, Some(why.join("; ")))
}

/// One attempt's group, made by the shim (owned by root: the task cannot change its
/// limits or move itself out).
#[derive(Debug, Clone)]
pub struct TaskGroup {
    version: u8,
    dir: PathBuf,
    home: PathBuf,
}

impl TaskGroup {
    /// The group a shim makes for its task (see [`TaskGroup::enter`]).
    pub fn of_shim(mechanism: &Mechanism, shim_pid: u32) -> Option<TaskGroup> {
        let Mechanism::Cgroup {
            version,
            parent,
            home,
        } = mechanism
        else {
            return None;
        };
        Some(TaskGroup {
            version: *version,
            dir: parent.join(format!("task-{shim_pid}")),
            home: home.clone(),
        })
    }

    /// Make the group, with its limit if it has one, and move this process into it (so
    /// the task started next inherits it); [`TaskGroup::leave`] once the task has
    /// started.
    pub fn enter(mechanism: &Mechanism, limit_mib: Option<u64>) -> Result<TaskGroup, String> {
        let Mechanism::Cgroup {
            version,
            parent,
            home,
        } = mechanism
        else {
            return Err("not a cgroup mechanism".into());
        };
        let dir = parent.join(format!("task-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let group = TaskGroup {
            version: *version,
            dir,
            home: home.clone(),
        };
        let limits = match limit_mib {
            None => Ok(()),
            Some(mib) => group.set_limit(mib),
        };
        if let Err(e) = limits.and_then(|()| {
            write(
                &group.dir.join("cgroup.procs"),
                &std::process::id().to_string(),
            )
        }) {
            group.remove();
            return Err(e);
        }
        Ok(group)
    }

    fn set_limit(&self, limit_mib: u64) -> Result<(), String> {
        let bytes = (limit_mib * 1024 * 1024).to_string();
        if self.version == 2 {
            write(&self.dir.join("memory.max"), &bytes).map(|()| {
                // Best effort: no swapping past the limit; the whole task goes on OOM.
                let _ = write(&self.dir.join("memory.swap.max"), "0");
                let _ = write(&self.dir.join("memory.oom.group"), "1");
            })
        } else {
            write(&self.dir.join("memory.limit_in_bytes"), &bytes).map(|()| {
                let _ = write(&self.dir.join("memory.memsw.limit_in_bytes"), &bytes);
            })
        }
    }

    /// Move this process back out, leaving the task alone in the group.
    pub fn leave(&self) {
        let _ = write(
            &self.home.join("cgroup.procs"),
            &std::process::id().to_string(),
        );
    }

    /// Whether the kernel killed a process of the group for exceeding its limit.
    pub fn oom_killed(&self) -> bool {
        let file = if self.version == 2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        oom_kills(&std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()) > 0
    }

    /// Kill every process in the group (`cgroup.kill` where cgroup v2 has it, else each
    /// pid, stopped first so none forks past the kill), until it is empty.
    pub fn kill_all(&self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if self.version == 2 {
            let _ = write(&self.dir.join("cgroup.kill"), "1");
        }
        let me = std::process::id() as i32;
        for _ in 0..50 {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .filter(|p| *p != me)
                .collect();
            if pids.is_empty() {
                return;
            }
            for sig in [Signal::SIGSTOP, Signal::SIGKILL] {
                for pid in &pids {
                    let _ = kill(Pid::from_raw(*pid), sig);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Kill what is left of the task and remove the group.
    pub fn remove(&self) {
        for _ in 0..50 {
            self.kill_all();
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// The `oom_kill` count in `memory.events` (v2) or `memory.oom_control` (v1).
pub fn oom_kills(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The polling fallback's backstop for `RLIMIT_DATA`, in bytes.
pub fn data_backstop_bytes(limit_mib: u64) -> u64 {
    (limit_mib * 2).max(limit_mib + 256) * 1024 * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_round_trip_through_the_shim_argument() {
        let m = Mechanism::Cgroup {
            version: 2,
            parent: "/sys/fs/cgroup/pod".into(),
            home: "/sys/fs/cgroup/pod/taskhost".into(),
        };
        assert_eq!(Mechanism::from_arg(&m.to_arg()).unwrap(), m);
        assert_eq!(m.name(), "cgroup-v2");
        assert_eq!(Mechanism::from_arg(POLL).unwrap(), Mechanism::Poll);
        assert!(Mechanism::from_arg("cgroup-v3:/a:/b").is_err());
    }

    #[test]
    fn oom_kill_counts_are_read_from_either_version() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n";
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(oom_kills(v2), 1);
        assert_eq!(oom_kills(v1), 2);
        assert_eq!(oom_kills("oom_kill_disable 0\n"), 0);
        assert_eq!(data_backstop_bytes(64), 320 * 1024 * 1024);
        assert_eq!(data_backstop_bytes(1024), 2048 * 1024 * 1024);
    }
}
