//! The taskhost: a long-lived worker that runs Batchplane tasks as unix processes.
//! [`worker`] is the worker itself; [`shim`] is the small program each task runs under
//! (`taskhost exec`), which holds it to its memory ([`memory`]), runs it as a user of
//! its own ([`isolation`]) and measures its use ([`sampler`]); [`forecast`] predicts when slots free; [`templates`] makes array
//! children's commands from their job's template and reads queues in priority order;
//! [`logs`] ships each attempt's output to CloudWatch Logs.

pub mod forecast;
pub mod isolation;
pub mod logs;
pub mod memory;
pub mod sampler;
pub mod shim;
pub mod templates;
pub mod worker;

/// Copy this executable to `dest` (a file path, or a directory to put `taskhost` in),
/// executable by all, written beside it and renamed into place so a reader never sees
/// half a binary. This is the worker pod's init container: the taskhost image copies
/// its static binary into a volume the task's image runs it from, so any base image
/// (distroless, scratch) can be a task's image.
pub fn install(dest: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let to = if dest.is_dir() {
        dest.join("taskhost")
    } else {
        dest.to_path_buf()
    };
    let me = std::env::current_exe().context("finding this executable")?;
    let tmp = to.with_extension("partial");
    std::fs::copy(&me, &tmp)
        .with_context(|| format!("copying {} to {}", me.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", tmp.display()))?;
    std::fs::rename(&tmp, &to).with_context(|| format!("moving it to {}", to.display()))?;
    Ok(to)
}
