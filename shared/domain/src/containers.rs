//! What a task runs in: a container image, and the IAM role its processes act as (AWS
//! Batch's `image` and `jobRoleArn`). Every worker of a pool runs in one container, so
//! a pool is keyed by its container as well as its queue, team and shape: tasks of two
//! images, or of two roles, never share a worker.
//!
//! A pool's name is also an SQS queue name, which cannot hold an image reference, so it
//! carries the container's [`key`](Container::key) instead; the container itself is
//! stored under that key when a job first uses it.

use serde::{Deserialize, Serialize};

/// The longest image reference (the OCI distribution spec's limit on a name).
pub const MAX_IMAGE_LEN: usize = 255;

/// An attempt ran inside its image (a worker pod of the image).
pub const IMAGE_ENFORCED: &str = "container";
/// An attempt ran on its worker's host, not in its image, and without its job role: a
/// worker with no container runtime (the local stack).
pub const IMAGE_NOT_ENFORCED: &str = "not enforced: ran on the worker's host";

/// The hex digits of a container key.
pub const KEY_LEN: usize = 12;

/// A task's image and job role.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Container {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_role_arn: Option<String>,
}

impl Container {
    /// A container checked as a field of a request: `image` and `job_role_arn` are the
    /// field names errors name.
    pub fn checked(
        image: &str,
        job_role_arn: Option<&str>,
        image_field: &str,
        role_field: &str,
    ) -> Result<Container, String> {
        check_image(image).map_err(|e| format!("{image_field} {image:?}: {e}"))?;
        if let Some(r) = job_role_arn {
            check_role_arn(r).map_err(|e| format!("{role_field} {r:?}: {e}"))?;
        }
        Ok(Container {
            image: image.to_string(),
            job_role_arn: job_role_arn.map(String::from),
        })
    }

    /// The container's key: 12 hex digits of a stable hash of image and role, the same
    /// on every reader and build.
    pub fn key(&self) -> String {
        let text = format!(
            "{}\n{}",
            self.image,
            self.job_role_arn.as_deref().unwrap_or("")
        );
        let h = super::ids::stable_hash(&text);
        format!("{:016x}", h)[..KEY_LEN].to_string()
    }
}

/// Whether `key` is a container key (as a pool's name carries it).
pub fn is_key(key: &str) -> bool {
    key.len() == KEY_LEN && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An image reference as Docker and the OCI distribution spec read it:
/// `[registry[:port]/]path[:tag][@algorithm:digest]`, path components in lower case.
pub fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("is empty".into());
    }
    if image.len() > MAX_IMAGE_LEN {
        return Err(format!(
            "is {} characters; an image reference has at most {MAX_IMAGE_LEN}",
            image.len()
        ));
    }
    let (name_tag, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        check_digest(d)?;
    }
    // A tag follows the last ':' after the last '/' (a ':' before it is a port).
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        check_tag(t)?;
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 && is_registry(components[0]) {
        check_registry(components.remove(0))?;
    }
    for c in components {
        check_path_component(c)?;
    }
    Ok(())
}

/// A first component names a registry when it has a '.' or a port, or is `localhost`.
fn is_registry(c: &str) -> bool {
    c.contains('.') || c.contains(':') || c == "localhost"
}

fn check_registry(r: &str) -> Result<(), String> {
    let (host, port) = match r.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !host_ok {
        return Err(format!("registry {r:?} is not a host name"));
    }
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("registry {r:?} has a port that is not a number"));
        }
    }
    Ok(())
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn check_path_component(c: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "{c:?} is not a repository name component (lower-case letters and digits, joined by '.', '_', '__' or '-')"
        ))
    };
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum_lower(b[0]) || !is_alnum_lower(b[b.len() - 1]) {
        return bad();
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum_lower(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum_lower(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return bad();
        }
    }
    Ok(())
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {t:?} must be 1 to 128 of letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        ))
    }
}

/// `algorithm:hex`, e.g. `sha256:` and 64 hex digits.
fn check_digest(d: &str) -> Result<(), String> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err(format!("digest {d:?} must be algorithm:hex, e.g. sha256:…"));
    };
    let want = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(format!("digest algorithm {alg:?} must be sha256 or sha512")),
    };
    if hex.len() != want || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "digest {d:?} must have {want} lower-case hex digits after {alg}:"
        ));
    }
    Ok(())
}

/// An IAM role ARN: `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
pub fn check_role_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5].strip_prefix("role/").is_some_and(|name| {
            !name.is_empty()
                && name.len() <= 512
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err("is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_follow_the_distribution_grammar() {
        for good in [
            "busybox",
            "python:3.12-slim",
            "library/ubuntu:24.04",
            "public.ecr.aws/docker/library/alpine:3.20",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/tool:v1.2_3",
            "localhost:5000/a__b/c-d--e:latest",
            "gcr.io/distroless/static-debian12@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "registry:8443/x.y/z:tag@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(check_image(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("Python:3", "repository name component"),
            ("python:", "tag"),
            ("python:-x", "tag"),
            ("a//b", "repository name component"),
            ("a/b-", "repository name component"),
            ("ubuntu@sha256:abc", "64"),
            ("ubuntu@md5:abc", "sha256 or sha512"),
            ("host.example:80x/a", "port"),
            ("bad_host.example/a", "host name"),
            ("with space", "repository name component"),
        ] {
            let e = check_image(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(check_image(&"a".repeat(256)).unwrap_err().contains("255"));
    }

    #[test]
    fn role_arns_are_iam_roles() {
        assert_eq!(
            check_role_arn("arn:aws:iam::123456789012:role/service/batch-job"),
            Ok(())
        );
        assert_eq!(
            check_role_arn("arn:aws-cn:iam::123456789012:role/x"),
            Ok(())
        );
        for bad in [
            "role/x",
            "arn:aws:iam::1234:role/x",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::123456789012:role/",
        ] {
            assert!(check_role_arn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_are_stable_short_hex_and_tell_image_and_role_apart() {
        let plain = Container {
            image: "python:3.12".into(),
            job_role_arn: None,
        };
        let with_role = Container {
            job_role_arn: Some("arn:aws:iam::123456789012:role/r".into()),
            ..plain.clone()
        };
        let other = Container {
            image: "python:3.13".into(),
            job_role_arn: None,
        };
        assert!(is_key(&plain.key()), "{}", plain.key());
        assert_eq!(plain.key(), plain.clone().key());
        assert_ne!(plain.key(), with_role.key());
        assert_ne!(plain.key(), other.key());
        // Pinned: a key is part of stored pool names, so it must not change by build.
        assert_eq!(plain.key(), "be024fc23a65");
        assert!(!is_key("0123456789AB") && !is_key("0123"));
    }

    #[test]
    fn checked_containers_name_the_field_that_is_wrong() {
        let e = Container::checked("Bad", None, "image", "job_role_arn").unwrap_err();
        assert!(e.starts_with("image \"Bad\""), "{e}");
        let e = Container::checked(
            "ok",
            Some("nope"),
            "image",
            "containerProperties.jobRoleArn",
        )
        .unwrap_err();
        assert!(e.starts_with("containerProperties.jobRoleArn"), "{e}");
    }
}
