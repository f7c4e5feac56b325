//! The hostpath state directory under faults: a second server on it, images
//! the journal does not name, and a journal that is damaged, cut short or
//! gone. Nothing may ever delete an image; a start that cannot trust its
//! journal refuses with a message, and `multicsi recover` rebuilds the
//! journal from the images' own records.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::api::*;
use crate::harness::{BackendUnderTest, Server, run_expecting_exit};
use crate::observability::{http_get, metrics_address};

const NAMES: [&str; 3] = ["state-a", "state-b", "state-c"];

fn state_dir(s: &Server) -> PathBuf {
    s.dir().join("state")
}

fn journal(s: &Server) -> PathBuf {
    state_dir(s).join("journal")
}

fn image(s: &Server, id: &str) -> PathBuf {
    state_dir(s).join("volumes").join(format!("{id}.img"))
}

/// Every regular file under `dir`, with its content's length and a digest
/// of its first MiB (enough to see that nothing was written or removed).
fn tree(dir: &Path) -> BTreeSet<(PathBuf, u64, Vec<u8>)> {
    use std::io::Read;
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read state dir").flatten() {
            let path = entry.path();
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                todo.push(path);
            } else {
                let mut head = Vec::new();
                std::fs::File::open(&path)
                    .expect("open")
                    .take(1 << 20)
                    .read_to_end(&mut head)
                    .expect("read");
                out.insert((path, meta.len(), head));
            }
        }
    }
    out
}

/// Creates the three volumes and writes a marker into each image.
async fn volumes_with_data(s: &Server) -> Vec<String> {
    let mut ids = Vec::new();
    for name in NAMES {
        let v = s
            .create(name, s.backend.sizes.small, mount_cap("ext4"))
            .await;
        ids.push(v.volume_id);
    }
    ids
}

fn write_markers(s: &Server, ids: &[String]) {
    use std::os::unix::fs::FileExt;
    for id in ids {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(image(s, id))
            .expect("open image");
        f.write_all_at(format!("data of {id}").as_bytes(), 4096)
            .expect("write marker");
        f.sync_all().expect("sync");
    }
}

fn assert_markers(s: &Server, ids: &[String]) {
    use std::os::unix::fs::FileExt;
    for id in ids {
        let want = format!("data of {id}");
        let mut got = vec![0; want.len()];
        std::fs::File::open(image(s, id))
            .unwrap_or_else(|e| panic!("image of {id} is gone: {e}"))
            .read_exact_at(&mut got, 4096)
            .expect("read marker");
        assert_eq!(got, want.as_bytes(), "data of {id} changed");
    }
}

/// Runs `multicsi recover` on the server's state directory.
fn recover(s: &Server) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_multicsi"));
    cmd.arg("recover")
        .arg("--state-dir")
        .arg(state_dir(s))
        .env_remove("MULTICSI_STATE_DIR");
    let (status, out) = run_expecting_exit(cmd);
    assert!(status.success(), "multicsi recover failed: {out}");
    out
}

/// The server refuses to start on the damaged state, says what is wrong and
/// how to recover, and leaves every file as it was; `multicsi recover`
/// then brings every volume back, with its data and its name.
async fn refused_then_recovered(s: &mut Server, ids: &[String], what: &str) {
    // The lock file names the latest owner; everything else must stay.
    let without_lock = |t: BTreeSet<(PathBuf, u64, Vec<u8>)>| {
        t.into_iter()
            .filter(|(p, _, _)| !p.ends_with("lock"))
            .collect::<BTreeSet<_>>()
    };
    let before = without_lock(tree(&state_dir(s)));
    let (status, out) = s.start_expecting_refusal(None);
    assert!(
        !status.success(),
        "{what}: the server started; output:\n{out}"
    );
    assert!(
        out.contains("multicsi recover"),
        "{what}: the refusal does not say how to recover:\n{out}"
    );
    let after = without_lock(tree(&state_dir(s)));
    assert_eq!(
        before, after,
        "{what}: the refused start changed the state directory"
    );
    assert_markers(s, ids);

    let report = recover(s);
    assert!(
        report.contains(&ids[0]),
        "{what}: recover names no volume:\n{report}"
    );
    s.spawn().await;
    let listed: BTreeSet<String> = s.list_volume_ids(0).await.into_iter().collect();
    let want: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(listed, want, "{what}: recovered volumes differ");
    // Names came back too: the same CreateVolume answers the same volume.
    for (name, id) in NAMES.iter().zip(ids) {
        let again = s
            .create(name, s.backend.sizes.small, mount_cap("ext4"))
            .await;
        assert_eq!(&again.volume_id, id, "{what}: {name} is another volume now");
    }
    assert_markers(s, ids);
    for id in ids {
        s.delete(id).await;
    }
}

/// A second `serve` on a state directory that a running server owns
/// refuses before it reads or writes anything, and names the holder.
pub async fn a_second_server_on_the_state_dir_is_refused(b: BackendUnderTest) {
    let mut s = Server::start(&b).await;
    let ids = volumes_with_data(&s).await;
    let before = tree(&state_dir(&s));
    let other_socket = s.dir().join("other.sock");
    let (status, out) = s.start_expecting_refusal(Some(&other_socket));
    assert!(!status.success(), "the second server started:\n{out}");
    let holder = format!("pid {}", s.pid().expect("running"));
    assert!(
        out.contains(&holder),
        "the refusal does not name the holder ({holder}):\n{out}"
    );
    assert_eq!(
        before,
        tree(&state_dir(&s)),
        "the second server changed the state directory"
    );
    // Nor does `multicsi recover` run beside it.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_multicsi"));
    cmd.arg("recover").arg("--state-dir").arg(state_dir(&s));
    let (status, out) = run_expecting_exit(cmd);
    assert!(
        !status.success() && out.contains(&holder),
        "recover ran beside the server:\n{out}"
    );
    assert_eq!(
        before,
        tree(&state_dir(&s)),
        "recover changed the state directory"
    );
    // The owner goes on, and what it acknowledges survives its restart.
    let late = s
        .create("state-late", b.sizes.small, mount_cap("ext4"))
        .await;
    s.kill9();
    s.spawn().await;
    let listed: BTreeSet<String> = s.list_volume_ids(0).await.into_iter().collect();
    for id in ids.iter().chain([&late.volume_id]) {
        assert!(listed.contains(id), "{id} was lost");
    }
}

/// An image the journal does not name is kept aside and reported, never
/// deleted.
pub async fn an_unknown_image_is_kept_aside(b: BackendUnderTest) {
    let mut b = b;
    b.args.extend(["--metrics-address", "127.0.0.1:0"]);
    let mut s = Server::start(&b).await;
    let ids = volumes_with_data(&s).await;
    s.terminate();
    write_markers(&s, &ids);
    let stranger = "hp-0123456789abcdef0123456789abcdef";
    let path = image(&s, stranger);
    std::fs::write(&path, b"someone's data").expect("write a stranger's image");
    s.spawn().await;
    let kept: Vec<PathBuf> = tree(&state_dir(&s))
        .into_iter()
        .filter(|(_, _, head)| head.as_slice() == b"someone's data")
        .map(|(p, _, _)| p)
        .collect();
    assert_eq!(kept.len(), 1, "the unknown image is gone: {kept:?}");
    let log = s.log_tail(200);
    assert!(
        log.contains(stranger) && log.contains("kept aside"),
        "the start did not report the unknown image:\n{log}"
    );
    let listed: BTreeSet<String> = s.list_volume_ids(0).await.into_iter().collect();
    assert!(!listed.contains(stranger));
    assert_markers(&s, &ids);
    // Reported in the metrics and by `doctor`.
    let (_, scrape) = http_get(metrics_address(&s), "/metrics");
    assert!(
        scrape.contains("multicsi_hostpath_kept_aside_files 1"),
        "no kept-aside count in the metrics:\n{scrape}"
    );
    let doctor = Command::new(env!("CARGO_BIN_EXE_multicsi"))
        .args(["doctor", "--backend", "hostpath", "--endpoint"])
        .arg(format!("unix://{}", s.socket().display()))
        .arg("--state-dir")
        .arg(state_dir(&s))
        .env_remove("MULTICSI_CONFIG")
        .output()
        .expect("run multicsi doctor");
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        said.contains(&kept[0].display().to_string())
            && said.contains(&format!("pid {}", s.pid().expect("running"))),
        "doctor does not report the kept-aside image and the owner:\n{said}"
    );
}

fn find_last(data: &[u8], what: &str) -> usize {
    data.windows(what.len())
        .rposition(|w| w == what.as_bytes())
        .unwrap_or_else(|| panic!("{what} is not in the journal"))
}

fn find_first(data: &[u8], what: &str) -> usize {
    data.windows(what.len())
        .position(|w| w == what.as_bytes())
        .unwrap_or_else(|| panic!("{what} is not in the journal"))
}

/// Three volumes with data, the server stopped (after one restart, which
/// compacts the journal, when `compacted`), a byte of `name`'s last record
/// in the journal flipped; then the start must refuse and recover restore.
async fn flipped_then_recovered(b: BackendUnderTest, compacted: bool, name: &str, what: &str) {
    let mut s = Server::start(&b).await;
    let ids = volumes_with_data(&s).await;
    s.terminate();
    if compacted {
        s.spawn().await;
        s.terminate();
    }
    write_markers(&s, &ids);
    let mut data = std::fs::read(journal(&s)).expect("journal");
    let at = find_last(&data, name);
    data[at] ^= 0x20;
    std::fs::write(journal(&s), &data).expect("damage the journal");
    refused_then_recovered(&mut s, &ids, what).await;
}

/// A byte flipped inside the last batch, which was acknowledged: that is
/// damage, not a torn write.
pub async fn a_flipped_byte_in_the_last_batch_is_refused(b: BackendUnderTest) {
    flipped_then_recovered(b, false, NAMES[2], "flipped byte in the last batch").await;
}

/// A byte flipped in a batch in the middle of the journal.
pub async fn a_flipped_byte_in_the_middle_is_refused(b: BackendUnderTest) {
    flipped_then_recovered(b, false, NAMES[1], "flipped byte in the middle").await;
}

/// After a restart the journal is one compacted batch; damage inside it
/// is corruption, never a torn write.
pub async fn damage_in_the_compacted_batch_is_refused(b: BackendUnderTest) {
    flipped_then_recovered(b, true, NAMES[2], "damage in the compacted batch").await;
}

/// A journal cut short (inside its records).
pub async fn a_truncated_journal_is_refused(b: BackendUnderTest) {
    let mut s = Server::start(&b).await;
    let ids = volumes_with_data(&s).await;
    s.terminate();
    write_markers(&s, &ids);
    let data = std::fs::read(journal(&s)).expect("journal");
    let at = find_first(&data, NAMES[1]);
    std::fs::write(journal(&s), &data[..at]).expect("truncate the journal");
    refused_then_recovered(&mut s, &ids, "truncated journal").await;
}

/// A journal that is gone while images are there: never a fresh, empty
/// start that then cleans the images up.
pub async fn a_missing_journal_with_images_is_refused(b: BackendUnderTest) {
    let mut s = Server::start(&b).await;
    let ids = volumes_with_data(&s).await;
    s.terminate();
    write_markers(&s, &ids);
    std::fs::remove_file(journal(&s)).expect("remove the journal");
    refused_then_recovered(&mut s, &ids, "missing journal").await;
}

/// Runs a command of the host; it must succeed.
fn host(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fills the filesystem of `path` with a file there until it is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("filler file");
    let block = vec![0x5a; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let small = [0x5a; 512];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
}

async fn probe_ready(s: &Server) -> bool {
    ok(
        "Probe",
        s.identity().probe(multicsi::csi::ProbeRequest {}).await,
    )
    .ready
        == Some(true)
}

async fn volume_condition(s: &Server, id: &str) -> multicsi::csi::VolumeCondition {
    ok(
        "ControllerGetVolume",
        s.controller()
            .controller_get_volume(multicsi::csi::ControllerGetVolumeRequest {
                volume_id: id.to_string(),
            })
            .await,
    )
    .status
    .and_then(|st| st.volume_condition)
    .expect("a volume condition")
}

/// The state on a small filesystem of its own: a volume's space is
/// reserved when it is made; a create that does not fit is
/// RESOURCE_EXHAUSTED with the free space; thin volumes count against the
/// capacity; on a full disk the driver reports not ready, deletes work, it
/// starts again, and it is ready once there is space.
pub async fn space_is_honest_on_a_small_state_disk(b: BackendUnderTest) {
    crate::harness::require_node(&b);
    let mut b = b;
    b.args.extend(["--metrics-address", "127.0.0.1:0"]);
    let mut s = Server::start(&b).await;
    s.terminate();
    let disk = s.dir().join("small-state.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .expect("disk image");
    let disk = disk.display().to_string();
    let state = state_dir(&s).display().to_string();
    host("mkfs.ext4", &["-q", "-F", "-m", "0", &disk]);
    host("mount", &["-o", "loop", &disk, &state]);
    s.spawn().await;
    assert!(probe_ready(&s).await, "not ready on an empty state disk");

    let mib: u64 = 1 << 20;
    let thick = s.create("space-thick", 8 * mib, mount_cap("ext4")).await;
    assert!(
        crate::harness::allocated_bytes(&image(&s, &thick.volume_id)) >= 8 * mib,
        "the thick volume's space is not reserved"
    );
    let status = fails(
        "CreateVolume larger than the disk",
        s.controller()
            .create_volume(create_request("space-huge", 200 * mib, mount_cap("ext4")))
            .await,
        tonic::Code::ResourceExhausted,
    );
    assert!(
        status.message().contains("available"),
        "the refusal does not tell the free space: {}",
        status.message()
    );
    let capacity = |s: &Server| {
        let mut c = s.controller();
        async move {
            ok(
                "GetCapacity",
                c.get_capacity(multicsi::csi::GetCapacityRequest::default())
                    .await,
            )
            .available_capacity as u64
        }
    };
    let before = capacity(&s).await;
    let mut thin_request = create_request("space-thin", 16 * mib, mount_cap("ext4"));
    thin_request.parameters = params(&[("multicsi.io/provisioning", "thin")]);
    let thin = s.create_with(thin_request).await;
    assert!(
        crate::harness::allocated_bytes(&image(&s, &thin.volume_id)) < 8 * mib,
        "a thin volume was allocated"
    );
    let after = capacity(&s).await;
    assert!(
        after + 15 * mib <= before,
        "the thin volume is not counted: capacity {before} -> {after}"
    );
    let mut bad = create_request("space-bad", 8 * mib, mount_cap("ext4"));
    bad.parameters = params(&[("multicsi.io/provisioning", "sometimes")]);
    let status = fails(
        "CreateVolume with an unknown provisioning",
        s.controller().create_volume(bad).await,
        tonic::Code::InvalidArgument,
    );
    assert!(status.message().contains("multicsi.io/provisioning"));

    // The disk fills up.
    let filler = state_dir(&s).join("filler");
    fill(&filler);
    assert!(!probe_ready(&s).await, "ready on a full state disk");
    let (readyz, _) = http_get(metrics_address(&s), "/readyz");
    assert!(readyz.contains(" 503 "), "/readyz on a full disk: {readyz}");
    let condition = volume_condition(&s, &thin.volume_id).await;
    assert!(
        condition.abnormal,
        "a thin volume on a full disk is reported healthy"
    );
    assert!(!volume_condition(&s, &thick.volume_id).await.abnormal);
    // Deletes still work, and the driver starts on a full disk.
    s.delete(&thick.volume_id).await;
    fill(&filler);
    s.kill9();
    s.spawn().await;
    assert!(
        !probe_ready(&s).await,
        "ready on a full state disk after a restart"
    );
    assert!(
        s.log_tail(40).contains("could not be compacted"),
        "the restart on a full disk did not append to the journal as it is"
    );
    s.delete(&thin.volume_id).await;
    assert!(s.list_volume_ids(0).await.is_empty());
    std::fs::remove_file(&filler).expect("remove the filler");
    assert!(probe_ready(&s).await, "not ready once there is space again");
    s.create("space-again", 8 * mib, mount_cap("ext4")).await;
}
