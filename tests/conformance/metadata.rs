//! The SnapshotMetadata service: allocated extents of a snapshot and the
//! delta between two, checked block for block against what the test wrote
//! into the volume's image between the snapshots; paging, continuation
//! from a starting offset, both block styles, the spec's error codes.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use multicsi::csi::plugin_capability::service::Type as PluginService;
use multicsi::csi::snapshot_metadata_client::SnapshotMetadataClient;
use multicsi::csi::{self as csi, BlockMetadataType};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::api::{create_request, mount_cap, name, ok, params};
use crate::harness::{BackendUnderTest, Server};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const BLOCK: u64 = 4 * KIB;

/// What one call streamed.
#[derive(Debug)]
struct Streamed {
    types: BTreeSet<i32>,
    capacities: BTreeSet<i64>,
    /// Tuples per message.
    pages: Vec<usize>,
    tuples: Vec<(u64, u64)>,
}

impl Streamed {
    fn new() -> Self {
        Streamed {
            types: BTreeSet::new(),
            capacities: BTreeSet::new(),
            pages: Vec::new(),
            tuples: Vec::new(),
        }
    }

    fn add(&mut self, kind: i32, capacity: i64, tuples: &[csi::BlockMetadata]) {
        self.types.insert(kind);
        self.capacities.insert(capacity);
        self.pages.push(tuples.len());
        self.tuples.extend(
            tuples
                .iter()
                .map(|t| (t.byte_offset as u64, t.size_bytes as u64)),
        );
    }

    /// The one style and capacity of every message, and the tuples in
    /// ascending order without overlap.
    #[track_caller]
    fn checked(self, kind: BlockMetadataType, capacity: u64) -> Self {
        assert_eq!(
            self.types,
            BTreeSet::from([kind as i32]),
            "block_metadata_type"
        );
        assert_eq!(
            self.capacities,
            BTreeSet::from([capacity as i64]),
            "volume_capacity_bytes"
        );
        for pair in self.tuples.windows(2) {
            assert!(
                pair[0].0 + pair[0].1 <= pair[1].0,
                "tuples overlap or go backwards: {pair:?}"
            );
        }
        assert!(self.tuples.iter().all(|t| t.1 > 0), "an empty tuple");
        self
    }
}

fn client(s: &Server) -> SnapshotMetadataClient<Channel> {
    s.snapshot_metadata()
}

async fn allocated(s: &Server, id: &str, from: i64, max: i32) -> Result<Streamed, Status> {
    let stream = client(s)
        .get_metadata_allocated(csi::GetMetadataAllocatedRequest {
            snapshot_id: id.to_string(),
            starting_offset: from,
            max_results: max,
            ..Default::default()
        })
        .await?
        .into_inner();
    drain(stream, |r: &csi::GetMetadataAllocatedResponse| {
        (
            r.block_metadata_type,
            r.volume_capacity_bytes,
            &r.block_metadata,
        )
    })
    .await
}

/// Reads a whole stream; `parts` gives each reply's style, capacity and
/// tuples.
async fn drain<R>(
    mut stream: tonic::Streaming<R>,
    parts: impl Fn(&R) -> (i32, i64, &Vec<csi::BlockMetadata>),
) -> Result<Streamed, Status> {
    let mut out = Streamed::new();
    while let Some(reply) = stream.message().await? {
        let (kind, capacity, tuples) = parts(&reply);
        out.add(kind, capacity, tuples);
    }
    Ok(out)
}

async fn delta(
    s: &Server,
    base: &str,
    target: &str,
    from: i64,
    max: i32,
) -> Result<Streamed, Status> {
    let stream = client(s)
        .get_metadata_delta(csi::GetMetadataDeltaRequest {
            base_snapshot_id: base.to_string(),
            target_snapshot_id: target.to_string(),
            starting_offset: from,
            max_results: max,
            ..Default::default()
        })
        .await?
        .into_inner();
    drain(stream, |r: &csi::GetMetadataDeltaResponse| {
        (
            r.block_metadata_type,
            r.volume_capacity_bytes,
            &r.block_metadata,
        )
    })
    .await
}

#[track_caller]
fn streamed(what: &str, reply: Result<Streamed, Status>) -> Streamed {
    reply.unwrap_or_else(|s| panic!("{what}: expected OK, got {:?}: {}", s.code(), s.message()))
}

#[track_caller]
fn refused(what: &str, reply: Result<Streamed, Status>, code: Code) {
    match reply {
        Ok(r) => panic!("{what}: expected {code:?}, got OK: {r:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {}", s.message());
            assert!(!s.message().is_empty(), "{what}: no message");
        }
    }
}

/// A thin volume (its image is sparse) of `bytes`.
async fn thin_volume(s: &Server, test: &str, n: usize, bytes: u64) -> String {
    let mut request = create_request(&name(test, n), bytes, mount_cap("ext4"));
    request.parameters = params(&[("multicsi.io/provisioning", "thin")]);
    let reply = ok("CreateVolume", s.controller().create_volume(request).await);
    reply.volume.expect("volume").volume_id
}

async fn snapshot(s: &Server, volume: &str, test: &str, n: usize) -> String {
    let reply = ok(
        "CreateSnapshot",
        s.controller()
            .create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: volume.to_string(),
                name: name(test, n),
                ..Default::default()
            })
            .await,
    );
    reply.snapshot.expect("snapshot").snapshot_id
}

/// The image of a hostpath volume, written directly while it is attached
/// nowhere.
fn image(state: &Path, volume: &str) -> PathBuf {
    state.join("volumes").join(format!("{volume}.img"))
}

/// Writes `data` at each offset and makes it durable.
fn write_at(path: &Path, writes: &[(u64, Vec<u8>)]) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open image");
    for (offset, data) in writes {
        file.write_all_at(data, *offset).expect("write image");
    }
    file.sync_all().expect("sync image");
}

/// Random bytes, never a whole block of zeros.
fn noise(rng: &mut fastrand::Rng, len: u64) -> Vec<u8> {
    (0..len).map(|_| rng.u8(1..)).collect()
}

/// The 4 KiB blocks a set of writes touches, as merged extents.
fn extents_of(blocks: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == b * BLOCK => last.1 += BLOCK,
            _ => out.push((b * BLOCK, BLOCK)),
        }
    }
    out
}

fn blocks_of(writes: &[(u64, Vec<u8>)]) -> BTreeSet<u64> {
    writes
        .iter()
        .flat_map(|(offset, data)| offset / BLOCK..(offset + data.len() as u64).div_ceil(BLOCK))
        .collect()
}

/// `count` writes of one block each at random blocks of `[0, size)`,
/// adjacent ones included.
fn scattered(rng: &mut fastrand::Rng, size: u64, count: usize) -> Vec<(u64, Vec<u8>)> {
    let mut blocks = BTreeSet::new();
    while blocks.len() < count {
        let b = rng.u64(0..size / BLOCK);
        blocks.insert(b);
        // Every fourth one with its neighbour: extents longer than a block.
        if rng.u8(0..4) == 0 && b + 1 < size / BLOCK {
            blocks.insert(b + 1);
        }
    }
    blocks
        .into_iter()
        .map(|b| (b * BLOCK, noise(rng, BLOCK)))
        .collect()
}

/// The state directory of a hostpath server.
fn state_of(s: &Server) -> PathBuf {
    s.dir().join("state")
}

/// Two snapshots of one volume with known blocks written between them:
/// the delta is exactly those blocks (a block rewritten with its old data
/// is no change), and the allocated extents of each are exactly its data.
pub async fn delta_is_exactly_the_blocks_written_between(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut rng = fastrand::Rng::with_seed(15);
    let size = 64 * MIB;
    let volume = thin_volume(&s, "meta-delta", 0, size).await;
    let path = image(&state_of(&s), &volume);
    let before = vec![
        (MIB, noise(&mut rng, 64 * KIB)),
        (20 * MIB, noise(&mut rng, BLOCK)),
    ];
    write_at(&path, &before);
    let base = snapshot(&s, &volume, "meta-delta", 1).await;
    let changed = vec![
        (MIB + 8 * KIB, noise(&mut rng, 3 * BLOCK)),
        (10 * MIB, noise(&mut rng, BLOCK)),
        (size - BLOCK, noise(&mut rng, BLOCK)),
    ];
    let mut after = changed.clone();
    // The same data again is no change.
    after.push(before[1].clone());
    write_at(&path, &after);
    let target = snapshot(&s, &volume, "meta-delta", 2).await;

    let got = streamed("GetMetadataDelta", delta(&s, &base, &target, 0, 0).await)
        .checked(BlockMetadataType::VariableLength, size);
    assert_eq!(got.tuples, extents_of(&blocks_of(&changed)));

    let got = streamed("GetMetadataAllocated", allocated(&s, &base, 0, 0).await)
        .checked(BlockMetadataType::VariableLength, size);
    assert_eq!(got.tuples, extents_of(&blocks_of(&before)));
    let mut all = before.clone();
    all.extend(changed);
    let got = streamed("GetMetadataAllocated", allocated(&s, &target, 0, 0).await)
        .checked(BlockMetadataType::VariableLength, size);
    assert_eq!(got.tuples, extents_of(&blocks_of(&all)));
}

/// max_results bounds every message; a call continued from the end of
/// any tuple received gives exactly the rest.
pub async fn paging_and_continuation_are_exact(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut rng = fastrand::Rng::with_seed(7);
    let size = 32 * MIB;
    let volume = thin_volume(&s, "meta-page", 0, size).await;
    let base = snapshot(&s, &volume, "meta-page", 1).await;
    let writes = scattered(&mut rng, size, 40);
    write_at(&image(&state_of(&s), &volume), &writes);
    let target = snapshot(&s, &volume, "meta-page", 2).await;
    let expected = extents_of(&blocks_of(&writes));
    assert!(expected.len() > 10, "the test needs many extents");

    let whole = streamed("GetMetadataDelta", delta(&s, &base, &target, 0, 3).await)
        .checked(BlockMetadataType::VariableLength, size);
    assert_eq!(whole.tuples, expected);
    assert!(
        whole.pages.iter().all(|&n| n <= 3),
        "max_results 3: {:?}",
        whole.pages
    );
    assert!(whole.pages.len() >= expected.len() / 3);
    for cut in [1, expected.len() / 2, expected.len() - 1] {
        let (offset, length) = expected[cut - 1];
        let from = (offset + length) as i64;
        let rest = streamed("continued delta", delta(&s, &base, &target, from, 5).await)
            .checked(BlockMetadataType::VariableLength, size);
        assert_eq!(rest.tuples, expected[cut..], "continued from {from}");
        let rest = streamed("continued allocated", allocated(&s, &target, from, 5).await)
            .checked(BlockMetadataType::VariableLength, size);
        assert_eq!(rest.tuples, expected[cut..], "allocated from {from}");
    }
    // From inside an extent: the first tuple is the rest of that extent
    // from its block holding the offset, then the others.
    let (offset, length) = expected[4];
    let inside = offset + length - 1;
    let block = inside - inside % BLOCK;
    let mut tail = vec![(block, offset + length - block)];
    tail.extend_from_slice(&expected[5..]);
    let rest = streamed(
        "delta from inside",
        delta(&s, &base, &target, inside as i64, 0).await,
    );
    assert_eq!(rest.tuples, tail);
    // From the very end: nothing, but the capacity and style still come.
    let end = streamed(
        "delta from the end",
        delta(&s, &base, &target, size as i64, 0).await,
    )
    .checked(BlockMetadataType::VariableLength, size);
    assert!(end.tuples.is_empty());
}

/// With `--metadata-block-size`, every tuple is one block of that size and
/// the blocks are exactly those holding a change.
pub async fn fixed_length_blocks_cover_exactly_the_changes(mut b: BackendUnderTest) {
    const FIXED: u64 = 64 * KIB;
    b.args.extend(["--metadata-block-size", "65536"]);
    let s = Server::start(&b).await;
    let mut rng = fastrand::Rng::with_seed(3);
    let size = 16 * MIB;
    let volume = thin_volume(&s, "meta-fixed", 0, size).await;
    let base = snapshot(&s, &volume, "meta-fixed", 1).await;
    let writes = scattered(&mut rng, size, 30);
    write_at(&image(&state_of(&s), &volume), &writes);
    let target = snapshot(&s, &volume, "meta-fixed", 2).await;
    let fixed: Vec<(u64, u64)> = blocks_of(&writes)
        .into_iter()
        .map(|b| b * BLOCK / FIXED)
        .collect::<BTreeSet<u64>>()
        .into_iter()
        .map(|b| (b * FIXED, FIXED))
        .collect();
    let got = streamed("GetMetadataDelta", delta(&s, &base, &target, 0, 4).await)
        .checked(BlockMetadataType::FixedLength, size);
    assert_eq!(got.tuples, fixed);
    assert!(got.pages.iter().all(|&n| n <= 4));
    let got = streamed("GetMetadataAllocated", allocated(&s, &target, 0, 0).await)
        .checked(BlockMetadataType::FixedLength, size);
    assert_eq!(got.tuples, fixed);
    // Continued from inside a block: that block again, then the rest.
    let from = fixed[2].0 + 100;
    let got = streamed(
        "continued delta",
        delta(&s, &base, &target, from as i64, 0).await,
    );
    assert_eq!(got.tuples, fixed[2..]);
}

/// The spec's codes: missing or malformed IDs and a negative max_results
/// are INVALID_ARGUMENT, unknown snapshots NOT_FOUND, offsets below 0 or
/// beyond the volume OUT_OF_RANGE; a delta is between two snapshots of one
/// volume, the base taken first.
pub async fn metadata_errors_follow_the_spec(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    assert!(adv.plugin(PluginService::SnapshotMetadataService));
    let size = 8 * MIB;
    let volume = thin_volume(&s, "meta-errors", 0, size).await;
    let other = thin_volume(&s, "meta-errors", 1, size).await;
    let first = snapshot(&s, &volume, "meta-errors", 2).await;
    let second = snapshot(&s, &volume, "meta-errors", 3).await;
    let elsewhere = snapshot(&s, &other, "meta-errors", 4).await;
    let unknown = b.unknown_snapshot_id;
    let ia = Code::InvalidArgument;
    let range = Code::OutOfRange;

    refused("allocated without id", allocated(&s, "", 0, 0).await, ia);
    refused("allocated of a path", allocated(&s, "../x", 0, 0).await, ia);
    refused(
        "allocated of an unknown snapshot",
        allocated(&s, unknown, 0, 0).await,
        Code::NotFound,
    );
    refused(
        "allocated from -1",
        allocated(&s, &first, -1, 0).await,
        range,
    );
    refused(
        "allocated beyond the volume",
        allocated(&s, &first, size as i64 + 1, 0).await,
        range,
    );
    refused(
        "allocated with max_results -1",
        allocated(&s, &first, 0, -1).await,
        ia,
    );

    refused("delta without base", delta(&s, "", &second, 0, 0).await, ia);
    refused(
        "delta without target",
        delta(&s, &first, "", 0, 0).await,
        ia,
    );
    refused(
        "delta from an unknown base",
        delta(&s, unknown, &second, 0, 0).await,
        Code::NotFound,
    );
    refused(
        "delta to an unknown target",
        delta(&s, &first, unknown, 0, 0).await,
        Code::NotFound,
    );
    refused(
        "delta from a snapshot of another volume",
        delta(&s, &elsewhere, &second, 0, 0).await,
        ia,
    );
    refused(
        "delta of a snapshot to itself",
        delta(&s, &first, &first, 0, 0).await,
        ia,
    );
    refused(
        "delta with base and target swapped",
        delta(&s, &second, &first, 0, 0).await,
        ia,
    );
    refused(
        "delta from -1",
        delta(&s, &first, &second, -1, 0).await,
        range,
    );
    refused(
        "delta beyond the volume",
        delta(&s, &first, &second, size as i64 + 1, 0).await,
        range,
    );
    refused(
        "delta with max_results -1",
        delta(&s, &first, &second, 0, -1).await,
        ia,
    );
    // A deleted snapshot is unknown.
    ok(
        "DeleteSnapshot",
        s.controller()
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: first.clone(),
                ..Default::default()
            })
            .await,
    );
    refused(
        "delta from a deleted base",
        delta(&s, &first, &second, 0, 0).await,
        Code::NotFound,
    );
}

/// A backend advertises SNAPSHOT_METADATA_SERVICE exactly when it serves
/// it: the service answers for its snapshots, and is UNIMPLEMENTED where
/// it is not advertised.
pub async fn snapshot_metadata_is_served_only_where_advertised(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    let expected = b
        .plugin_services
        .contains(&PluginService::SnapshotMetadataService);
    assert_eq!(
        adv.plugin(PluginService::SnapshotMetadataService),
        expected,
        "SNAPSHOT_METADATA_SERVICE advertised"
    );
    let code = if expected {
        Code::NotFound
    } else {
        Code::Unimplemented
    };
    refused(
        "GetMetadataAllocated",
        allocated(&s, b.unknown_snapshot_id, 0, 0).await,
        code,
    );
    refused(
        "GetMetadataDelta",
        delta(&s, b.unknown_snapshot_id, b.unknown_snapshot_id, 0, 0).await,
        code,
    );
}

/// At scale: a 1 GiB thin volume with data before the first snapshot and
/// a few thousand scattered blocks changed before the second; the delta is
/// exactly the changed blocks.
pub async fn delta_of_thousands_of_scattered_blocks_is_exact(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let mut rng = fastrand::Rng::with_seed(1);
    let size = 1024 * MIB;
    let volume = thin_volume(&s, "meta-scale", 0, size).await;
    let path = image(&state_of(&s), &volume);
    let before: Vec<(u64, Vec<u8>)> = (0..64)
        .map(|_| {
            let offset = rng.u64(0..size / MIB - 1) * MIB;
            (offset, noise(&mut rng, 256 * KIB))
        })
        .collect();
    write_at(&path, &before);
    let base = snapshot(&s, &volume, "meta-scale", 1).await;
    let changed = scattered(&mut rng, size, 3000);
    write_at(&path, &changed);
    let target = snapshot(&s, &volume, "meta-scale", 2).await;
    let got = streamed("GetMetadataDelta", delta(&s, &base, &target, 0, 0).await)
        .checked(BlockMetadataType::VariableLength, size);
    let expected = extents_of(&blocks_of(&changed));
    assert_eq!(got.tuples.len(), expected.len());
    assert!(got.tuples == expected, "the delta differs from the writes");
}

/// On a filesystem with reflinks (xfs), a snapshot shares the blocks of the
/// volume: the delta skips what both snapshots share (the log says how
/// much it compared) and is still exact.
pub async fn shared_blocks_are_skipped_on_a_reflink_filesystem(mut b: BackendUnderTest) {
    crate::harness::require_node(&b);
    let scratch = tempfile::Builder::new()
        .prefix("csi-meta-xfs-")
        .tempdir()
        .expect("scratch dir");
    let backing = scratch.path().join("xfs.img");
    let mount_point = scratch.path().join("mnt");
    std::fs::create_dir(&mount_point).expect("mount point");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(1536 * MIB))
        .expect("xfs backing file");
    run(Command::new("mkfs.xfs")
        .args(["-q", "-m", "reflink=1"])
        .arg(&backing));
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&backing)
        .arg(&mount_point));
    let unmount = Unmount(mount_point.clone());
    let state: &'static str = Box::leak(
        mount_point
            .join("state")
            .display()
            .to_string()
            .into_boxed_str(),
    );
    for arg in b.args.iter_mut() {
        if *arg == "{dir}/state" {
            *arg = state;
        }
    }
    let mut s = Server::start(&b).await;
    let mut rng = fastrand::Rng::with_seed(5);
    let size = 256 * MIB;
    let volume = thin_volume(&s, "meta-reflink", 0, size).await;
    let path = image(Path::new(state), &volume);
    // 64 MiB of data the snapshots share.
    let before = vec![(0, noise(&mut rng, 64 * MIB))];
    write_at(&path, &before);
    let base = snapshot(&s, &volume, "meta-reflink", 1).await;
    let changed = scattered(&mut rng, 64 * MIB, 200);
    write_at(&path, &changed);
    let target = snapshot(&s, &volume, "meta-reflink", 2).await;
    let got = streamed("GetMetadataDelta", delta(&s, &base, &target, 0, 0).await)
        .checked(BlockMetadataType::VariableLength, size);
    assert_eq!(got.tuples, extents_of(&blocks_of(&changed)));
    s.terminate();
    let log = s.log_tail(200);
    let line = log
        .lines()
        .rfind(|l| l.contains("snapshot delta computed"))
        .unwrap_or_else(|| panic!("no delta in the log:\n{log}"));
    let field = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    };
    assert!(
        field("shared_bytes") >= 60 * MIB,
        "the shared extents were not recognised: {line}"
    );
    assert!(
        field("compared_bytes") < 16 * MIB,
        "more was read than the changed blocks need: {line}"
    );
    drop(s);
    drop(unmount);
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unmounts the test's own filesystem when the test ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Several backends: the service is advertised because hostpath offers it;
/// hostpath snapshots (IDs `hostpath:...`) get their delta, a snapshot of
/// the cloud backend FAILED_PRECONDITION, a delta across backends
/// INVALID_ARGUMENT.
pub async fn metadata_is_routed_to_the_backend_that_computes_it(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let adv = s.advertised().await;
    assert!(adv.plugin(PluginService::SnapshotMetadataService));
    let size = 16 * MIB;
    let mut request = create_request(&name("meta-route", 0), size, mount_cap("ext4"));
    request.parameters = params(&[
        ("multicsi.io/backend", "hostpath"),
        ("multicsi.io/provisioning", "thin"),
    ]);
    let local = ok("CreateVolume", s.controller().create_volume(request).await)
        .volume
        .expect("volume")
        .volume_id;
    let own = local.strip_prefix("hostpath:").expect("a hostpath ID");
    let base = snapshot(&s, &local, "meta-route", 1).await;
    let mut rng = fastrand::Rng::with_seed(9);
    let writes = vec![(5 * MIB, noise(&mut rng, BLOCK))];
    write_at(&image(&state_of(&s), own), &writes);
    let target = snapshot(&s, &local, "meta-route", 2).await;
    let got = streamed("GetMetadataDelta", delta(&s, &base, &target, 0, 0).await)
        .checked(BlockMetadataType::VariableLength, size);
    assert_eq!(got.tuples, vec![(5 * MIB, BLOCK)]);

    let cloud = ok(
        "CreateVolume on the default backend",
        s.controller()
            .create_volume(create_request(
                &name("meta-route", 3),
                1 << 30,
                mount_cap("ext4"),
            ))
            .await,
    )
    .volume
    .expect("volume")
    .volume_id;
    let cloud_snapshot = snapshot(&s, &cloud, "meta-route", 4).await;
    refused(
        "allocated of a cloud snapshot",
        allocated(&s, &cloud_snapshot, 0, 0).await,
        Code::FailedPrecondition,
    );
    refused(
        "delta of cloud snapshots",
        delta(&s, &cloud_snapshot, &cloud_snapshot, 0, 0).await,
        Code::FailedPrecondition,
    );
    refused(
        "delta across backends",
        delta(&s, &cloud_snapshot, &target, 0, 0).await,
        Code::InvalidArgument,
    );
}
