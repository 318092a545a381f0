//! The admin endpoint's Unix socket (`[admin] socket`). Its file mode (0660) decides who may
//! talk to the endpoint, so the socket gets that mode before it appears under its name: it
//! is bound inside a fresh private directory, given its mode there, and renamed into place.

use super::AdminError;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::{UnixListener, UnixStream};

/// Owner and group may connect; others may not.
pub const MODE: u32 = 0o660;

/// A bound admin socket; dropping it removes the file.
#[derive(Debug)]
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl AdminSocket {
    /// Binds `path` with mode [`MODE`]. A stale socket left by a previous run is replaced;
    /// one that still answers (another gateway) or any other file there is refused.
    pub fn bind(path: &Path) -> Result<Self, AdminError> {
        let fail = |message: String| AdminError::Socket {
            path: path.to_path_buf(),
            message,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .ok_or_else(|| fail("has no parent directory".into()))?;
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(fail(
                        "another process answers on it (is this gateway already running?)".into(),
                    ));
                }
                std::fs::remove_file(path)
                    .map_err(|e| fail(format!("cannot remove the stale socket: {e}")))?;
            }
            Ok(_) => return Err(fail("exists and is not a socket".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        let private = dir.join(format!(".gateway-admin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(|e| fail(format!("cannot create {}: {e}", private.display())))?;
        let staged = private.join("admin.sock");
        let bound = (|| {
            let listener = UnixListener::bind(&staged)?;
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(MODE))?;
            std::fs::rename(&staged, path)?;
            Ok::<_, std::io::Error>(listener)
        })();
        let _ = std::fs::remove_file(&staged);
        let _ = std::fs::remove_dir(&private);
        let listener = bound.map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The next connection on `socket`; never resolves without one.
pub async fn accept(socket: Option<&AdminSocket>) -> std::io::Result<UnixStream> {
    match socket {
        Some(s) => s.listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gw-admin-sock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn the_socket_has_mode_0660_and_goes_away_on_drop() {
        let dir = tempdir("mode");
        let path = dir.join("sub/admin.sock");
        let s = AdminSocket::bind(&path).expect("bind");
        let meta = std::fs::symlink_metadata(&path).expect("exists");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, MODE);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("admin.sock")]);
        drop(s);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_live_socket_or_a_plain_file_is_not_replaced() {
        let dir = tempdir("live");
        let path = dir.join("admin.sock");
        let first = AdminSocket::bind(&path).expect("bind");
        let e = AdminSocket::bind(&path).expect_err("answers");
        assert!(e.to_string().contains("another process answers"), "{e}");
        drop(first);
        std::fs::write(&path, b"x").expect("file");
        let e = AdminSocket::bind(&path).expect_err("plain file");
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&path).expect("kept"), b"x");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let dir = tempdir("stale");
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("admin.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
        assert!(path.exists());
        let s = AdminSocket::bind(&path).expect("replaces the stale socket");
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
