//! The durable state store: an append-only journal of changes with group
//! commit, replayed into memory on start.
//!
//! File layout: an 8-byte file magic, then batches, then zeros up to the
//! file's capacity. The zeros are written for real when the file is made, so
//! appending never changes the file's size or block map and `fdatasync` only
//! has to write the data.
//!
//! A batch is one group commit: a 24-byte header (batch magic, payload
//! length, sequence number, CRC-32C of the payload, CRC-32C of the header's
//! first 20 bytes), then the payload: entries, each a 4-byte length and the
//! entry as JSON. All integers are little endian.
//!
//! One writer thread owns the file. Callers hand it an entry and wait (as a
//! future, not a thread) for its answer; the writer takes every entry that is
//! waiting, writes them as one batch with one `pwrite` and one `fdatasync`,
//! applies them to the in-memory state and only then answers. So a caller's
//! change is durable, and visible to readers, when its call returns.
//!
//! Replay stops at the first batch that does not check out. A batch is only
//! written after the previous one is durable, so only the last one can be
//! torn by a crash: its callers never got an answer, and it is dropped. If an
//! intact batch header lies beyond the damaged one, a committed batch was
//! damaged: that is corruption, and the journal refuses to open.
//!
//! On open, and when the file is full, the journal is compacted: the live
//! state is written as a fresh file (temporary name, fsync, rename, fsync of
//! the directory), so the file never holds more than the live state plus
//! the changes since the last compaction.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

const FILE_MAGIC: &[u8; 8] = b"MCSIJNL\x01";
/// Not valid UTF-8, so it never occurs inside the JSON of an entry.
const BATCH_MAGIC: u32 = 0xB1C5_4AFE;
const HEADER: usize = 24;
/// The largest entry accepted (a volume record is a few hundred bytes).
const MAX_ENTRY: usize = 1 << 20;
/// A batch holds at most this much payload (at least one entry).
const MAX_PAYLOAD: usize = 4 << 20;
/// The smallest file made; it grows to twice the live state when needed.
const MIN_CAPACITY: u64 = 4 << 20;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// State rebuilt from the journal's entries.
pub trait Replay: Default + Send + 'static {
    type Entry: Serialize + DeserializeOwned + Send + 'static;
    /// Applies one change.
    fn apply(&mut self, entry: Self::Entry);
    /// The live state as entries that rebuild it (for compaction).
    fn entries(&self) -> Vec<Self::Entry>;
}

/// What opening the journal found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Entries replayed.
    pub entries: usize,
    /// Bytes of a torn last batch that were dropped.
    pub torn_bytes: u64,
}

struct Pending<E> {
    bytes: Vec<u8>,
    entry: E,
    done: oneshot::Sender<io::Result<()>>,
}

/// The journal and the state it keeps.
pub struct Journal<S: Replay> {
    state: Arc<Mutex<S>>,
    queue: Sender<Pending<S::Entry>>,
}

impl<S: Replay> Journal<S> {
    /// Replays the journal at `path` (none yet: empty state), applies
    /// `extra` on top (records being migrated into it), compacts it and
    /// starts the writer.
    pub fn open(path: &Path, extra: Vec<S::Entry>) -> io::Result<(Self, Recovered)> {
        let mut state = S::default();
        let mut recovered = Recovered::default();
        let _ = fs::remove_file(temp_path(path));
        match fs::read(path) {
            Ok(data) => {
                let scan = scan(&data).map_err(|why| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("journal {} is damaged: {why}", path.display()),
                    )
                })?;
                for raw in &scan.entries {
                    let entry = serde_json::from_slice(raw).map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "journal {} holds an entry that does not parse: {e}",
                                path.display()
                            ),
                        )
                    })?;
                    state.apply(entry);
                }
                recovered.entries = scan.entries.len();
                recovered.torn_bytes = scan.torn_bytes;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for entry in extra {
            state.apply(entry);
        }
        let live = encode_all(&state.entries())?;
        let log = Log::create(path, &live, 0)?;
        let state = Arc::new(Mutex::new(state));
        let (queue, incoming) = std::sync::mpsc::channel();
        let shared = state.clone();
        std::thread::Builder::new()
            .name("journal".into())
            .stack_size(256 * 1024)
            .spawn(move || write_loop(log, shared, incoming))?;
        Ok((Journal { state, queue }, recovered))
    }

    /// The current (durable) state.
    pub fn state(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `entry` durably and applies it to the state.
    pub async fn commit(&self, entry: S::Entry) -> io::Result<()> {
        let bytes = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        if bytes.len() > MAX_ENTRY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a state entry of {} bytes is larger than {MAX_ENTRY}",
                    bytes.len()
                ),
            ));
        }
        let (done, answer) = oneshot::channel();
        let stopped = || io::Error::other("the journal writer has stopped");
        self.queue
            .send(Pending { bytes, entry, done })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    path.with_file_name(name)
}

fn encode_all<E: Serialize>(entries: &[E]) -> io::Result<Vec<Vec<u8>>> {
    entries
        .iter()
        .map(|e| serde_json::to_vec(e).map_err(io::Error::other))
        .collect()
}

/// The writer: takes what is waiting, commits it as one batch, answers.
fn write_loop<S: Replay>(
    mut log: Log,
    state: Arc<Mutex<S>>,
    incoming: Receiver<Pending<S::Entry>>,
) {
    let mut carried: Option<Pending<S::Entry>> = None;
    let mut failed: Option<String> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match incoming.recv() {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let mut batch = vec![first];
        let mut size = 4 + batch[0].bytes.len();
        loop {
            match incoming.try_recv() {
                Ok(p) if size + 4 + p.bytes.len() > MAX_PAYLOAD => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    size += 4 + p.bytes.len();
                    batch.push(p);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if let Some(why) = &failed {
            for p in batch {
                let _ = p.done.send(Err(io::Error::other(why.clone())));
            }
            continue;
        }
        let entries: Vec<&[u8]> = batch.iter().map(|p| p.bytes.as_slice()).collect();
        let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
        match log.append(&entries, || encode_all(&lock().entries())) {
            Ok(()) => {
                let mut state = lock();
                let mut answers = Vec::with_capacity(batch.len());
                for p in batch {
                    state.apply(p.entry);
                    answers.push(p.done);
                }
                drop(state);
                for done in answers {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                // After a failed write or fdatasync the file's contents are
                // unknown: refuse further changes until a restart replays it.
                let why = format!(
                    "the state journal {} could not be written ({e}); restart the driver",
                    log.path.display()
                );
                tracing::error!(error = %e, path = %log.path.display(), "state journal write failed");
                for p in batch {
                    let _ = p.done.send(Err(io::Error::new(e.kind(), why.clone())));
                }
                failed = Some(why);
            }
        }
    }
}

/// The open journal file.
struct Log {
    path: PathBuf,
    file: File,
    tail: u64,
    capacity: u64,
    seq: u64,
}

impl Log {
    /// Writes `live` as a fresh journal file with room for `room` more
    /// bytes (at least), and replaces the file at `path` with it.
    fn create(path: &Path, live: &[Vec<u8>], room: u64) -> io::Result<Log> {
        let temp = temp_path(path);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        let mut tail = FILE_MAGIC.len() as u64;
        file.write_all(FILE_MAGIC)?;
        let mut seq = 0;
        let mut start = 0;
        while start < live.len() {
            let mut end = start + 1;
            let mut size = 4 + live[start].len();
            while end < live.len() && size + 4 + live[end].len() <= MAX_PAYLOAD {
                size += 4 + live[end].len();
                end += 1;
            }
            seq += 1;
            let refs: Vec<&[u8]> = live[start..end].iter().map(Vec::as_slice).collect();
            let batch = encode_batch(seq, &refs);
            file.write_all(&batch)?;
            tail += batch.len() as u64;
            start = end;
        }
        let wanted = (2 * (tail + room)).max(MIN_CAPACITY);
        let capacity = wanted.div_ceil(1 << 20) << 20;
        let mut written = tail;
        while written < capacity {
            let n = ZEROS.len().min((capacity - written) as usize);
            file.write_all(&ZEROS[..n])?;
            written += n as u64;
        }
        file.sync_all()?;
        fs::rename(&temp, path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()?;
        Ok(Log {
            path: path.to_path_buf(),
            file,
            tail,
            capacity,
            seq,
        })
    }

    /// Appends one batch durably; compacts first (with the live state from
    /// `live`) when the file has no room for it.
    fn append(
        &mut self,
        entries: &[&[u8]],
        live: impl FnOnce() -> io::Result<Vec<Vec<u8>>>,
    ) -> io::Result<()> {
        let size = HEADER + entries.iter().map(|e| 4 + e.len()).sum::<usize>();
        if self.tail + size as u64 > self.capacity {
            let fresh = Log::create(&self.path, &live()?, size as u64)?;
            tracing::info!(path = %self.path.display(), bytes = fresh.tail, capacity = fresh.capacity, "state journal compacted");
            *self = fresh;
        }
        let batch = encode_batch(self.seq + 1, entries);
        self.file.write_all_at(&batch, self.tail)?;
        self.file.sync_data()?;
        self.tail += batch.len() as u64;
        self.seq += 1;
        Ok(())
    }
}

fn encode_batch(seq: u64, entries: &[&[u8]]) -> Vec<u8> {
    let payload_len: usize = entries.iter().map(|e| 4 + e.len()).sum();
    let mut out = Vec::with_capacity(HEADER + payload_len);
    out.extend_from_slice(&[0; HEADER]);
    for entry in entries {
        out.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        out.extend_from_slice(entry);
    }
    let payload_crc = crc32c(&out[HEADER..]);
    out[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..20].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c(&out[0..20]);
    out[20..24].copy_from_slice(&header_crc.to_le_bytes());
    out
}

struct Header {
    len: usize,
    seq: u64,
    payload_crc: u32,
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or_default())
}

/// The batch header at `pos`, if one is there intact.
fn header_at(data: &[u8], pos: usize) -> Option<Header> {
    let h = data.get(pos..pos + HEADER)?;
    if u32_at(h, 0) != BATCH_MAGIC || crc32c(&h[0..20]) != u32_at(h, 20) {
        return None;
    }
    Some(Header {
        len: u32_at(h, 4) as usize,
        seq: u64::from_le_bytes(h[8..16].try_into().unwrap_or_default()),
        payload_crc: u32_at(h, 16),
    })
}

/// The entries of a journal file.
#[derive(Debug)]
struct Scan<'a> {
    entries: Vec<&'a [u8]>,
    torn_bytes: u64,
}

/// Reads every intact batch; see the module documentation for what counts
/// as a torn tail and what as corruption.
fn scan(data: &[u8]) -> Result<Scan<'_>, String> {
    if !data.starts_with(FILE_MAGIC) {
        return Err("it does not start with the journal's magic bytes".into());
    }
    let mut entries = Vec::new();
    let mut pos = FILE_MAGIC.len();
    let mut last_seq = 0;
    while let Some(header) = header_at(data, pos) {
        if header.seq != last_seq + 1 {
            return Err(format!(
                "batch at offset {pos} has sequence number {} after {last_seq}",
                header.seq
            ));
        }
        let start = pos + HEADER;
        let Some(payload) = data.get(start..start + header.len) else {
            break;
        };
        if crc32c(payload) != header.payload_crc {
            break;
        }
        let mut at = 0;
        while at < payload.len() {
            let len = payload
                .get(at..at + 4)
                .map(|b| u32_at(b, 0) as usize)
                .ok_or_else(|| format!("batch at offset {pos} has a cut entry length"))?;
            let entry = payload
                .get(at + 4..at + 4 + len)
                .ok_or_else(|| format!("batch at offset {pos} has an entry beyond its end"))?;
            entries.push(entry);
            at += 4 + len;
        }
        pos = start + header.len;
        last_seq = header.seq;
    }
    let rest = &data[pos..];
    let Some(last_data) = rest.iter().rposition(|&b| b != 0) else {
        return Ok(Scan {
            entries,
            torn_bytes: 0,
        });
    };
    let magic = BATCH_MAGIC.to_le_bytes();
    for at in pos + 1..data.len().saturating_sub(HEADER - 1) {
        if data[at..at + 4] == magic
            && let Some(header) = header_at(data, at)
            && header.seq > last_seq
        {
            return Err(format!(
                "the batch at offset {pos} does not check out but batch {} at offset {at} follows it",
                header.seq
            ));
        }
    }
    Ok(Scan {
        entries,
        torn_bytes: last_data as u64 + 1,
    })
}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32C (Castagnoli).
fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default, Debug, PartialEq)]
    struct Kv(BTreeMap<String, u32>);

    #[derive(Serialize, serde::Deserialize, Debug, Clone)]
    enum Op {
        Set(String, u32),
        Del(String),
    }

    impl Replay for Kv {
        type Entry = Op;
        fn apply(&mut self, entry: Op) {
            match entry {
                Op::Set(k, v) => {
                    self.0.insert(k, v);
                }
                Op::Del(k) => {
                    self.0.remove(&k);
                }
            }
        }
        fn entries(&self) -> Vec<Op> {
            self.0.iter().map(|(k, v)| Op::Set(k.clone(), *v)).collect()
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    fn set(k: &str, v: u32) -> Op {
        Op::Set(k.into(), v)
    }

    /// A journal file holding the given batches, written without a writer.
    fn file_with(batches: &[Vec<Op>]) -> Vec<u8> {
        let mut data = FILE_MAGIC.to_vec();
        for (i, batch) in batches.iter().enumerate() {
            let raw = encode_all(batch).unwrap();
            let refs: Vec<&[u8]> = raw.iter().map(Vec::as_slice).collect();
            data.extend(encode_batch(i as u64 + 1, &refs));
        }
        data
    }

    fn values(data: &[u8]) -> Result<Vec<String>, String> {
        Ok(scan(data)?
            .entries
            .iter()
            .map(|e| String::from_utf8(e.to_vec()).unwrap())
            .collect())
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn commits_survive_a_reopen_and_the_file_is_compacted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("journal");
        let rt = runtime();
        {
            let (journal, recovered) = Journal::<Kv>::open(&path, vec![]).unwrap();
            assert_eq!(recovered, Recovered::default());
            rt.block_on(async {
                for i in 0..50 {
                    journal.commit(set(&format!("k{i}"), i)).await.unwrap();
                }
                for i in 0..40 {
                    journal.commit(Op::Del(format!("k{i}"))).await.unwrap();
                }
            });
            assert_eq!(journal.state().0.len(), 10);
        }
        let (journal, recovered) = Journal::<Kv>::open(&path, vec![set("extra", 7)]).unwrap();
        assert_eq!(recovered.entries, 90);
        assert_eq!(recovered.torn_bytes, 0);
        assert_eq!(journal.state().0.len(), 11);
        assert_eq!(journal.state().0["k45"], 45);
        drop(journal);
        // Compacted on open: the live state only.
        let (journal, recovered) = Journal::<Kv>::open(&path, vec![]).unwrap();
        assert_eq!(recovered.entries, 11);
        assert_eq!(journal.state().0["extra"], 7);
        assert_eq!(fs::metadata(&path).unwrap().len(), MIN_CAPACITY);
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn concurrent_commits_are_grouped_and_all_durable() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("journal");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let (journal, _) = Journal::<Kv>::open(&path, vec![]).unwrap();
        let journal = Arc::new(journal);
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..200u32 {
                let journal = journal.clone();
                tasks.spawn(async move { journal.commit(set(&format!("c{i}"), i)).await });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap().unwrap();
            }
        });
        drop(journal);
        let data = fs::read(&path).unwrap();
        let batches = (0..data.len() - 4)
            .filter(|&at| data[at..at + 4] == BATCH_MAGIC.to_le_bytes())
            .count();
        assert!(
            batches < 200,
            "{batches} batches for 200 concurrent commits"
        );
        let (journal, recovered) = Journal::<Kv>::open(&path, vec![]).unwrap();
        assert_eq!(recovered.entries, 200);
        assert_eq!(journal.state().0.len(), 200);
    }

    #[test]
    fn a_full_file_is_compacted_while_running() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("journal");
        let (journal, _) = Journal::<Kv>::open(&path, vec![]).unwrap();
        let big = "x".repeat(200 * 1024);
        runtime().block_on(async {
            // 40 rewrites of one 200 KiB key overflow a 4 MiB file.
            for i in 0..40 {
                journal.commit(Op::Set(big.clone(), i)).await.unwrap();
            }
            journal.commit(set("small", 1)).await.unwrap();
        });
        drop(journal);
        assert_eq!(fs::metadata(&path).unwrap().len(), MIN_CAPACITY);
        let (journal, recovered) = Journal::<Kv>::open(&path, vec![]).unwrap();
        assert!(recovered.entries < 40, "{recovered:?}");
        assert_eq!(journal.state().0[&big], 39);
        assert_eq!(journal.state().0["small"], 1);
    }

    #[test]
    fn a_torn_last_batch_is_dropped() {
        let mut data = file_with(&[vec![set("a", 1)], vec![set("b", 2), set("c", 3)]]);
        let whole = data.len();
        data.extend([0; 4096]);
        assert_eq!(values(&data).unwrap().len(), 3);
        // Payload of the last batch partly missing (zeros).
        let mut torn = data.clone();
        torn[whole - 5..whole].fill(0);
        assert_eq!(values(&torn).unwrap(), vec![r#"{"Set":["a",1]}"#]);
        assert!(scan(&torn).unwrap().torn_bytes > 0);
        // Header of the last batch missing, its payload written.
        let mut torn = data.clone();
        let last = whole - (HEADER + 2 * 4 + 2 * br#"{"Set":["b",2]}"#.len());
        torn[last..last + HEADER].fill(0);
        assert_eq!(values(&torn).unwrap().len(), 1);
        // Cut off in the middle of the header.
        let mut torn = data[..last + 10].to_vec();
        torn.extend([0; 100]);
        assert_eq!(values(&torn).unwrap().len(), 1);
    }

    #[test]
    fn damage_before_a_later_batch_is_corruption() {
        let data = file_with(&[vec![set("a", 1)], vec![set("b", 2)], vec![set("c", 3)]]);
        let second = FILE_MAGIC.len() + HEADER + 4 + br#"{"Set":["a",1]}"#.len();
        let mut bad = data.clone();
        bad[second + HEADER + 6] ^= 0x01;
        let err = scan(&bad).unwrap_err();
        assert!(err.contains("follows it"), "{err}");
        let mut bad = data.clone();
        bad[second + 9] ^= 0x01;
        assert!(scan(&bad).is_err());
        assert!(scan(b"not a journal").is_err());
    }

    #[test]
    fn a_damaged_journal_refuses_to_open() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("journal");
        let mut data = file_with(&[vec![set("a", 1)], vec![set("b", 2)]]);
        data[FILE_MAGIC.len() + HEADER + 6] ^= 0x01;
        fs::write(&path, &data).unwrap();
        let err = Journal::<Kv>::open(&path, vec![]).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("damaged"), "{err}");
        assert_eq!(
            fs::read(&path).unwrap(),
            data,
            "a damaged journal is kept as it is"
        );
    }

    #[test]
    fn a_torn_journal_opens_without_the_torn_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("journal");
        let mut data = file_with(&[vec![set("a", 1)], vec![set("b", 2)]]);
        let len = data.len();
        data[len - 3] = 0;
        data.extend([0; 512]);
        fs::write(&path, &data).unwrap();
        let (journal, recovered) = Journal::<Kv>::open(&path, vec![]).unwrap();
        assert_eq!(recovered.entries, 1);
        assert!(recovered.torn_bytes > 0);
        assert_eq!(journal.state().0, BTreeMap::from([("a".to_string(), 1)]));
    }
}
