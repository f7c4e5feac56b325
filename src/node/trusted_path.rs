//! Staging and target paths resolved to where they really are, through
//! trusted symlinks only.
//!
//! A symlink in a path would lead a mount (or an unmount) to wherever it
//! points. One that only root could have made or changed is the node's own
//! set-up (a kubelet root moved to another disk, `/var/lib/kubelet ->
//! /data/kubelet`) and is followed: it is owned by root, in a directory
//! owned by root that neither group nor others may write. Any other symlink
//! (made by an unprivileged user, or in a directory others can write) is
//! refused with INVALID_ARGUMENT naming it. The result has no symlink left,
//! so mounts are made and found (`/proc/self/mountinfo`) at one path.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{CsiError, CsiResult};

/// Symlinks followed in one path at most (as the kernel's ELOOP limit).
const MAX_LINKS: usize = 40;

/// `path` (absolute, without `..`: checked by the caller) with its trusted
/// symlinks resolved. The part that does not exist yet is kept as given.
pub fn resolve(field: &str, path: &Path) -> CsiResult<PathBuf> {
    let mut resolved = PathBuf::from("/");
    let mut pending: Vec<OsString> = names(path);
    pending.reverse();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let next = resolved.join(&name);
        let meta = match std::fs::symlink_metadata(&next) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                resolved = next;
                continue;
            }
            Err(e) => {
                return Err(CsiError::Internal(format!(
                    "{field} {}: cannot inspect {}: {e}",
                    path.display(),
                    next.display()
                )));
            }
        };
        if !meta.file_type().is_symlink() {
            resolved = next;
            continue;
        }
        let target = std::fs::read_link(&next).unwrap_or_default();
        if let Some(why) = untrusted(&meta, &resolved) {
            return Err(CsiError::InvalidArgument(format!(
                "{field} {}: {} is a symlink (to {}) that {why}; refusing to mount through it: pass the real path",
                path.display(),
                next.display(),
                target.display()
            )));
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(CsiError::InvalidArgument(format!(
                "{field} {}: more than {MAX_LINKS} symlinks to follow",
                path.display()
            )));
        }
        if target.is_absolute() {
            resolved = PathBuf::from("/");
        }
        let mut inner = names(&target);
        inner.reverse();
        pending.extend(inner);
    }
    Ok(resolved)
}

/// The longest name of one path component (NAME_MAX).
const MAX_NAME: usize = 255;

/// `path` resolved as [`resolve`] does, and confined: it must end up
/// strictly inside `root` (the kubelet directory, itself resolved by
/// [`resolve_root`]). Anything else is INVALID_ARGUMENT naming `field`.
pub fn resolve_inside(field: &str, path: &Path, root: &Path) -> CsiResult<PathBuf> {
    if let Some(long) = names(path).iter().find(|n| n.len() > MAX_NAME) {
        return Err(CsiError::InvalidArgument(format!(
            "{field} {}: the component {:?}... is longer than {MAX_NAME} bytes; pass a path whose every name fits",
            path.display(),
            long.to_string_lossy().chars().take(32).collect::<String>()
        )));
    }
    let resolved = resolve(field, path)?;
    if resolved.starts_with(root) && resolved != root {
        return Ok(resolved);
    }
    let through = if resolved == path {
        String::new()
    } else {
        format!(" (resolved to {})", resolved.display())
    };
    Err(CsiError::InvalidArgument(format!(
        "{field} {}{through} is not inside the kubelet directory {}; nothing was created or mounted: pass a path under it, or set --kubelet-dir (MULTICSI_KUBELET_DIR) to the kubelet's root directory",
        path.display(),
        root.display()
    )))
}

/// The kubelet directory as node paths resolve to it: every symlink in it
/// followed (it is the operator's setting, not a request's).
pub fn resolve_root(root: &Path) -> PathBuf {
    std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf())
}

/// The names of `path`'s components (`..` kept, `.` and `/` dropped).
fn names(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Why a symlink (with metadata `link`) in directory `dir` is not trusted,
/// or `None` when only root could have made it.
fn untrusted(link: &std::fs::Metadata, dir: &Path) -> Option<String> {
    if link.uid() != 0 {
        return Some(format!("belongs to uid {}, not root", link.uid()));
    }
    match std::fs::metadata(dir) {
        Ok(parent) if parent.uid() != 0 => Some(format!(
            "lies in {}, which belongs to uid {}, not root",
            dir.display(),
            parent.uid()
        )),
        Ok(parent) if parent.mode() & 0o022 != 0 => Some(format!(
            "lies in {}, which others may write (mode {:o})",
            dir.display(),
            parent.mode() & 0o7777
        )),
        Ok(_) => None,
        Err(e) => Some(format!(
            "lies in {}, which cannot be inspected: {e}",
            dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn lchown(path: &Path, uid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    }

    #[test]
    fn real_paths_and_missing_tails_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("a")).unwrap();
        let wanted = real.join("a/not/yet");
        assert_eq!(resolve("target_path", &wanted).unwrap(), wanted);
    }

    #[test]
    fn paths_outside_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        let root = real.join("kubelet");
        std::fs::create_dir_all(root.join("pods")).unwrap();
        let inside = root.join("pods/p1/mount");
        assert_eq!(
            resolve_inside("target_path", &inside, &root).unwrap(),
            inside
        );
        for outside in [
            real.join("elsewhere"),
            real.join("kubelet-sibling/pods"),
            root.clone(),
            PathBuf::from("/etc"),
        ] {
            let err = resolve_inside("target_path", &outside, &root).unwrap_err();
            assert!(matches!(err, CsiError::InvalidArgument(_)), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains("target_path") && text.contains("not inside the kubelet directory"),
                "{text}"
            );
        }
        let long = root.join("x".repeat(256));
        let text = resolve_inside("staging_target_path", &long, &root)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("staging_target_path") && text.contains("longer than 255"),
            "{text}"
        );
    }

    #[test]
    fn a_root_owned_link_out_of_the_root_is_refused() {
        assert!(root(), "run the unit tests as root (scripts/test.sh does)");
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        chmod(&real, 0o755);
        let root = real.join("kubelet");
        std::fs::create_dir_all(&root).unwrap();
        chmod(&root, 0o755);
        symlink("/etc", root.join("etc")).unwrap();
        let text = resolve_inside("target_path", &root.join("etc/x"), &root)
            .unwrap_err()
            .to_string();
        assert!(text.contains("resolved to /etc/x"), "{text}");
    }

    #[test]
    fn a_root_owned_link_in_a_root_only_directory_is_followed() {
        assert!(root(), "run the unit tests as root (scripts/test.sh does)");
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        chmod(&real, 0o755);
        std::fs::create_dir_all(real.join("disk/kubelet/pods")).unwrap();
        symlink(real.join("disk/kubelet"), real.join("kubelet")).unwrap();
        // A relative link to the link, too.
        symlink("kubelet", real.join("kubelet-again")).unwrap();
        assert_eq!(
            resolve("target_path", &real.join("kubelet/pods/p1/mount")).unwrap(),
            real.join("disk/kubelet/pods/p1/mount")
        );
        assert_eq!(
            resolve("target_path", &real.join("kubelet-again/pods")).unwrap(),
            real.join("disk/kubelet/pods")
        );
    }

    #[test]
    fn untrusted_links_are_refused_with_their_reason() {
        assert!(root(), "run the unit tests as root (scripts/test.sh does)");
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        chmod(&real, 0o755);
        std::fs::create_dir(real.join("elsewhere")).unwrap();

        // Made by another user.
        symlink(real.join("elsewhere"), real.join("theirs")).unwrap();
        lchown(&real.join("theirs"), 65534);
        let err = resolve("staging_target_path", &real.join("theirs/staging")).unwrap_err();
        assert!(matches!(err, CsiError::InvalidArgument(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("staging_target_path") && text.contains("uid 65534"),
            "{text}"
        );

        // Root's, but in a directory others may write.
        let open = real.join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o1777);
        symlink(real.join("elsewhere"), open.join("link")).unwrap();
        let text = resolve("target_path", &open.join("link/target"))
            .unwrap_err()
            .to_string();
        assert!(text.contains("others may write"), "{text}");

        // A trusted link that leads through an untrusted one.
        symlink(open.join("link"), real.join("via")).unwrap();
        let text = resolve("target_path", &real.join("via/target"))
            .unwrap_err()
            .to_string();
        assert!(text.contains("others may write"), "{text}");

        // A loop.
        symlink(real.join("loop-b"), real.join("loop-a")).unwrap();
        symlink(real.join("loop-a"), real.join("loop-b")).unwrap();
        let text = resolve("target_path", &real.join("loop-a/x"))
            .unwrap_err()
            .to_string();
        assert!(text.contains("more than 40 symlinks"), "{text}");
    }
}
