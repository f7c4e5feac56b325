//! The endpoint: a private socket, a stale one replaced, a live one left
//! alone, a clean exit on SIGTERM.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

use multicsi::csi;

use crate::api::ok;
use crate::harness::{BackendUnderTest, Server};

fn assert_private_socket(s: &Server) {
    let meta = std::fs::symlink_metadata(s.socket()).expect("the socket exists");
    assert!(meta.file_type().is_socket(), "the endpoint is not a socket");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the socket must be 0600 (only the owner may connect)"
    );
}

/// The socket is created 0600.
pub async fn socket_is_private(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    assert_private_socket(&s);
}

/// A socket file left by a killed server is replaced on restart.
pub async fn stale_socket_is_replaced(b: BackendUnderTest) {
    let mut s = Server::start(&b).await;
    let volume = s
        .create("conf-stale", b.sizes.small, crate::api::mount_cap("ext4"))
        .await;
    s.kill9();
    assert!(
        s.socket().exists(),
        "kill -9 should leave the socket file behind"
    );
    s.spawn().await;
    assert_private_socket(&s);
    ok("Probe", s.identity().probe(csi::ProbeRequest {}).await);
    // Same state: the volume is still there.
    assert_eq!(
        s.create("conf-stale", b.sizes.small, crate::api::mount_cap("ext4"))
            .await
            .volume_id,
        volume.volume_id
    );
    s.delete(&volume.volume_id).await;
}

/// A second server on the socket of a live one refuses to start and the
/// first keeps serving.
pub async fn live_socket_is_not_taken_over(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let other_state = tempfile::tempdir().expect("temp dir");
    let mut second = s
        .command_with_dir(other_state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a second multicsi");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second server started on a socket that is in use");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "the second server exited 0");
    assert_private_socket(&s);
    ok("Probe", s.identity().probe(csi::ProbeRequest {}).await);
}

/// SIGTERM: exit status 0 and the socket is removed.
pub async fn sigterm_exits_cleanly(b: BackendUnderTest) {
    let mut s = Server::start(&b).await;
    ok("Probe", s.identity().probe(csi::ProbeRequest {}).await);
    let status = s.terminate();
    assert!(
        status.success(),
        "SIGTERM must end the server with 0, got {status}"
    );
    assert!(
        !s.socket().exists(),
        "the socket must be removed on a clean exit"
    );
}
