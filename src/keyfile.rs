//! Files that hold secrets (the audit HMAC and signing keys, the inbound
//! TLS key, the secrets file, Vault credentials) must be private: one that
//! anyone on the machine may read is refused, naming the file and its
//! mode; one its group may read (what a Kubernetes secret volume with an
//! `fsGroup` gives) is allowed with a warning.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use zeroize::Zeroizing;

/// A key or credential file's bytes, one trailing newline (`\n` or
/// `\r\n`) stripped, wiped from memory when dropped: the one reader of
/// the audit HMAC key and Vault's credential files.
pub fn read_secret(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut bytes = Zeroizing::new(std::fs::read(path)?);
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(bytes)
}

/// What the mode of a secret-holding file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposure {
    /// Owner only (or not there: reading it reports that).
    Private,
    /// Readable by the file's group.
    Group(u32),
    /// Readable by anyone.
    World(u32),
}

/// The mode of `path` (following links, as a reader does).
pub fn exposure(path: &Path) -> Exposure {
    let Ok(meta) = std::fs::metadata(path) else {
        return Exposure::Private;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o004 != 0 {
        Exposure::World(mode)
    } else if mode & 0o040 != 0 {
        Exposure::Group(mode)
    } else {
        Exposure::Private
    }
}

/// The refusal of a world-readable key file.
pub fn world_readable(path: &Path, mode: u32) -> String {
    format!(
        "{} holds a secret and is readable by anyone (mode {mode:04o}); make it 0600 (or 0640 for a group)",
        path.display()
    )
}

/// The warning for a group-readable key file.
pub fn group_readable(path: &Path, mode: u32) -> String {
    format!(
        "{} holds a secret and is readable by its group (mode {mode:04o}); 0600 keeps it to the gateway's user",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_read_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "x").unwrap();
        let set = |m| std::fs::set_permissions(&f, std::fs::Permissions::from_mode(m)).unwrap();
        set(0o600);
        assert_eq!(exposure(&f), Exposure::Private);
        set(0o640);
        assert_eq!(exposure(&f), Exposure::Group(0o640));
        set(0o644);
        assert_eq!(exposure(&f), Exposure::World(0o644));
        // Kubernetes secret volumes reach files through links.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(exposure(&link), Exposure::World(0o644));
        assert!(world_readable(&link, 0o644).contains("0644"));
        assert_eq!(exposure(&dir.path().join("missing")), Exposure::Private);
    }
}
