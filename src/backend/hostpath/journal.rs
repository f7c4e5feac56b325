//! The durable state store: an append-only journal of changes with group
//! commit, replayed into memory on start.
//!
//! File layout: a 32-byte file header, then batches, then zeros up to the
//! file's capacity. The zeros are written for real when the file is made, so
//! appending never changes the file's size or block map and `fdatasync` only
//! has to write the data.
//!
//! The file header holds the file magic, the capacity (the file's length),
//! the offset where the batches written by the compaction that made the file
//! end, and a CRC-32C of the header. A batch is one group commit: a 24-byte
//! header (batch magic, payload length, sequence number, CRC-32C of the
//! payload, CRC-32C of the header's first 20 bytes), then the payload:
//! entries, each a 4-byte length and the entry as JSON. All integers are
//! little endian.
//!
//! One writer thread owns the file. Callers hand it an entry and wait (as a
//! future, not a thread) for its answer; the writer takes every entry that is
//! waiting, writes them as one batch with one `pwrite` and one `fdatasync`,
//! applies them to the in-memory state and only then answers. So a caller's
//! change is durable, and visible to readers, when its call returns.
//!
//! Replay stops at the first batch that does not check out. Only one thing
//! may be dropped there: the torn write of the last appended batch, whose
//! callers never got an answer. It is told from damage by its shape: it
//! lies after the compacted part; nothing but zeros follows it; and some
//! sector of it still holds the zeros the file was made with (a write cut
//! off by a crash leaves sectors unwritten; a written batch that fails its
//! checksum was damaged afterwards). Everything else that does not check
//! out — the file header, a batch of the compaction (it was fsynced before
//! the file was renamed into place, so it cannot be torn), a batch with
//! data after it, a file of another length than it was made with — is
//! corruption, and the journal refuses to open.
//!
//! On open, and when the file is full, the journal is compacted: the live
//! state is written as a fresh file (temporary name, fsync, rename, fsync of
//! the directory), so the file never holds more than the live state plus
//! the changes since the last compaction. When a compaction finds no space
//! the old file stays in use: on open it is appended to where it ends; while
//! running, changes that free space (deletions) may still use a reserve at
//! the file's end, and the journal reports itself unable to write until a
//! compaction succeeds.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

/// The magic of files written by earlier versions (an 8-byte header).
const FILE_MAGIC_V1: &[u8; 8] = b"MCSIJNL\x01";
const FILE_MAGIC: &[u8; 8] = b"MCSIJNL\x02";
const FILE_HEADER: usize = 32;
/// Not valid UTF-8, so it never occurs inside the JSON of an entry.
const BATCH_MAGIC: u32 = 0xB1C5_4AFE;
const HEADER: usize = 24;
/// The largest entry accepted (a volume record is a few hundred bytes).
const MAX_ENTRY: usize = 1 << 20;
/// A batch holds at most this much payload (at least one entry).
const MAX_PAYLOAD: usize = 4 << 20;
/// The smallest file made; it grows to twice the live state when needed.
const MIN_CAPACITY: u64 = 4 << 20;
/// The end of the file kept for changes that free space, for when a
/// compaction finds no space.
const RESERVE: u64 = 64 << 10;
/// The unit a write is cut off in by a crash (a disk sector).
const SECTOR: usize = 512;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// State rebuilt from the journal's entries.
pub trait Replay: Default + Send + 'static {
    type Entry: Serialize + DeserializeOwned + Send + 'static;
    /// Applies one change.
    fn apply(&mut self, entry: Self::Entry);
    /// The live state as entries that rebuild it (for compaction).
    fn entries(&self) -> Vec<Self::Entry>;
    /// Whether the change frees space (and so may use the reserve).
    fn frees_space(_entry: &Self::Entry) -> bool {
        false
    }
}

/// What opening the journal found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Entries replayed.
    pub entries: usize,
    /// Bytes of a torn last batch that were dropped.
    pub torn_bytes: u64,
    /// Why the journal could not be compacted on open (it is appended to
    /// where it ends instead).
    pub not_compacted: Option<String>,
}

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file does not check out: it must not be trusted or rewritten.
    #[error("journal {path} is damaged: {why}")]
    Damaged { path: String, why: String },
    #[error("cannot open the journal {path}: {source}")]
    Io { path: String, source: io::Error },
}

struct Pending<E> {
    bytes: Vec<u8>,
    frees_space: bool,
    entry: E,
    done: oneshot::Sender<io::Result<()>>,
}

/// The journal and the state it keeps.
pub struct Journal<S: Replay> {
    state: Arc<Mutex<S>>,
    queue: Sender<Pending<S::Entry>>,
    /// Why changes cannot be written right now, if they cannot.
    trouble: Arc<Mutex<Option<String>>>,
}

impl<S: Replay> Journal<S> {
    /// Replays the journal at `path` (none yet: empty state), applies
    /// `extra` on top (records being migrated into it), compacts it and
    /// starts the writer.
    pub fn open(path: &Path, extra: Vec<S::Entry>) -> Result<(Self, Recovered), OpenError> {
        let io_error = |source| OpenError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut state = S::default();
        let mut recovered = Recovered::default();
        let _ = fs::remove_file(temp_path(path));
        let mut resume = None;
        match fs::read(path) {
            Ok(data) => {
                let damaged = |why: String| OpenError::Damaged {
                    path: path.display().to_string(),
                    why,
                };
                let scan = scan(&data).map_err(damaged)?;
                for (i, raw) in scan.entries.iter().enumerate() {
                    let entry = serde_json::from_slice(raw)
                        .map_err(|e| damaged(format!("entry {i} does not parse: {e}")))?;
                    state.apply(entry);
                }
                recovered.entries = scan.entries.len();
                recovered.torn_bytes = scan.torn_bytes;
                if scan.current_format && extra.is_empty() {
                    resume = Some((
                        scan.tail as u64,
                        scan.torn_bytes,
                        scan.seq,
                        data.len() as u64,
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(e)),
        }
        for entry in extra {
            state.apply(entry);
        }
        let live = encode_all(&state.entries()).map_err(io_error)?;
        let log = match Log::create(path, &live, 0) {
            Ok(log) => log,
            Err(e) => match resume {
                Some((tail, torn, seq, capacity)) if is_no_space(&e) => {
                    recovered.not_compacted = Some(e.to_string());
                    Log::resume(path, tail, torn, seq, capacity).map_err(io_error)?
                }
                _ => return Err(io_error(e)),
            },
        };
        let state = Arc::new(Mutex::new(state));
        let trouble = Arc::new(Mutex::new(None));
        let (queue, incoming) = std::sync::mpsc::channel();
        let (shared, shared_trouble) = (state.clone(), trouble.clone());
        std::thread::Builder::new()
            .name("journal".into())
            .stack_size(256 * 1024)
            .spawn(move || write_loop(log, shared, shared_trouble, incoming))
            .map_err(io_error)?;
        Ok((
            Journal {
                state,
                queue,
                trouble,
            },
            recovered,
        ))
    }

    /// Writes a fresh journal at `path` that holds `entries` (a rebuilt
    /// state). An existing file there is replaced: move it aside first.
    pub fn write_fresh(path: &Path, entries: &[S::Entry]) -> io::Result<()> {
        Log::create(path, &encode_all(entries)?, 0).map(drop)
    }

    /// The current (durable) state.
    pub fn state(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why changes cannot be written right now, if they cannot.
    pub fn trouble(&self) -> Option<String> {
        self.trouble
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        let frees_space = S::frees_space(&entry);
        self.queue
            .send(Pending {
                bytes,
                frees_space,
                entry,
                done,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
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
    trouble: Arc<Mutex<Option<String>>>,
    incoming: Receiver<Pending<S::Entry>>,
) {
    let mut carried: Option<Pending<S::Entry>> = None;
    let mut failed: Option<String> = None;
    let set_trouble = |why: Option<String>| {
        *trouble.lock().unwrap_or_else(|p| p.into_inner()) = why;
    };
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
        let frees_space = batch.iter().all(|p| p.frees_space);
        let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
        match log.append(&entries, frees_space, || encode_all(&lock().entries())) {
            Ok(()) => {
                let mut state = lock();
                let mut answers = Vec::with_capacity(batch.len());
                for p in batch {
                    state.apply(p.entry);
                    answers.push(p.done);
                }
                drop(state);
                set_trouble(log.no_room.clone());
                for done in answers {
                    let _ = done.send(Ok(()));
                }
            }
            Err(error) => {
                // No room: the file is intact and a later compaction may
                // find space. A failed write or fdatasync: the file's
                // contents are unknown, so further changes are refused
                // until a restart replays it.
                let (e, why, stops) = match error {
                    AppendError::NoRoom(e) => {
                        let why = format!(
                            "the state journal {} is full and cannot be compacted ({e}); free space on its filesystem",
                            log.path.display()
                        );
                        (e, why, false)
                    }
                    AppendError::Write(e) => {
                        let why = format!(
                            "the state journal {} could not be written ({e}); restart the driver",
                            log.path.display()
                        );
                        (e, why, true)
                    }
                };
                tracing::error!(error = %e, path = %log.path.display(), "state journal cannot take changes");
                refuse(batch, &e, &why, &set_trouble);
                if stops {
                    failed = Some(why);
                }
            }
        }
    }
}

/// Answers every change of a batch that was not written with `why`, and
/// records it as the journal's trouble.
fn refuse<E>(
    batch: Vec<Pending<E>>,
    e: &io::Error,
    why: &str,
    set_trouble: &impl Fn(Option<String>),
) {
    set_trouble(Some(why.to_string()));
    for p in batch {
        let _ = p.done.send(Err(io::Error::new(e.kind(), why.to_string())));
    }
}

enum AppendError {
    /// No room in the file and the compaction failed: nothing was written.
    NoRoom(io::Error),
    /// The append itself failed: the file's end is unknown.
    Write(io::Error),
}

/// The open journal file.
struct Log {
    path: PathBuf,
    file: File,
    tail: u64,
    capacity: u64,
    seq: u64,
    /// Why the last compaction failed, while the file runs on its reserve.
    no_room: Option<String>,
}

impl Log {
    fn at(path: &Path, file: File, tail: u64, capacity: u64, seq: u64) -> Log {
        Log {
            path: path.to_path_buf(),
            file,
            tail,
            capacity,
            seq,
            no_room: None,
        }
    }

    /// Writes `live` as a fresh journal file with room for `room` more
    /// bytes (at least), and replaces the file at `path` with it.
    fn create(path: &Path, live: &[Vec<u8>], room: u64) -> io::Result<Log> {
        let temp = temp_path(path);
        let made = Self::write_file(&temp, live, room);
        let (file, tail, capacity, seq) = match made {
            Ok(made) => made,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        fs::rename(&temp, path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()?;
        Ok(Log::at(path, file, tail, capacity, seq))
    }

    fn write_file(temp: &Path, live: &[Vec<u8>], room: u64) -> io::Result<(File, u64, u64, u64)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(temp)?;
        let mut body = Vec::new();
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
            body.extend(encode_batch(seq, &refs));
            start = end;
        }
        let tail = (FILE_HEADER + body.len()) as u64;
        let wanted = (2 * (tail + room) + RESERVE).max(MIN_CAPACITY);
        let capacity = wanted.div_ceil(1 << 20) << 20;
        file.write_all(&encode_file_header(capacity, tail))?;
        file.write_all(&body)?;
        let mut written = tail;
        while written < capacity {
            let n = ZEROS.len().min((capacity - written) as usize);
            file.write_all(&ZEROS[..n])?;
            written += n as u64;
        }
        file.sync_all()?;
        Ok((file, tail, capacity, seq))
    }

    /// Opens an existing journal (of the current format) to append where
    /// its intact batches end, clearing a torn batch first.
    fn resume(path: &Path, tail: u64, torn: u64, seq: u64, capacity: u64) -> io::Result<Log> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut at = tail;
        while at < tail + torn {
            let n = ZEROS.len().min((tail + torn - at) as usize);
            file.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        file.sync_data()?;
        Ok(Log::at(path, file, tail, capacity, seq))
    }

    /// Appends one batch durably; compacts first (with the live state from
    /// `live`) when the file has no room for it. A batch that only frees
    /// space may use the reserve when the compaction fails.
    fn append(
        &mut self,
        entries: &[&[u8]],
        frees_space: bool,
        live: impl FnOnce() -> io::Result<Vec<Vec<u8>>>,
    ) -> Result<(), AppendError> {
        let size = (HEADER + entries.iter().map(|e| 4 + e.len()).sum::<usize>()) as u64;
        if self.tail + size > self.capacity.saturating_sub(RESERVE) {
            let compacted = live().and_then(|live| Log::create(&self.path, &live, size));
            match compacted {
                Ok(fresh) => {
                    tracing::info!(path = %self.path.display(), bytes = fresh.tail, capacity = fresh.capacity, "state journal compacted");
                    *self = fresh;
                }
                Err(e) if frees_space && self.tail + size <= self.capacity => {
                    tracing::warn!(error = %e, path = %self.path.display(), "state journal cannot be compacted; a deletion uses its reserve");
                    self.no_room = Some(format!(
                        "the state journal {} is nearly full and cannot be compacted ({e}); free space on its filesystem",
                        self.path.display()
                    ));
                }
                Err(e) => return Err(AppendError::NoRoom(e)),
            }
        }
        let batch = encode_batch(self.seq + 1, entries);
        self.file
            .write_all_at(&batch, self.tail)
            .and_then(|()| self.file.sync_data())
            .map_err(AppendError::Write)?;
        self.tail += batch.len() as u64;
        self.seq += 1;
        Ok(())
    }
}

fn encode_file_header(capacity: u64, compacted_end: u64) -> [u8; FILE_HEADER] {
    let mut out = [0; FILE_HEADER];
    out[0..8].copy_from_slice(FILE_MAGIC);
    out[8..16].copy_from_slice(&capacity.to_le_bytes());
    out[16..24].copy_from_slice(&compacted_end.to_le_bytes());
    let crc = crc32c(&out[0..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
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

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or_default())
}

/// The batch header at `pos`, if one is there intact.
fn header_at(data: &[u8], pos: usize) -> Option<Header> {
    let h = data.get(pos..pos + HEADER)?;
    if u32_at(h, 0) != BATCH_MAGIC || crc32c(&h[0..20]) != u32_at(h, 20) {
        return None;
    }
    Some(Header {
        len: u32_at(h, 4) as usize,
        seq: u64_at(h, 8),
        payload_crc: u32_at(h, 16),
    })
}

/// Where the batches of a file start and where its compacted part ends.
struct Layout {
    start: usize,
    compacted_end: usize,
    current_format: bool,
}

fn layout(data: &[u8]) -> Result<Layout, String> {
    if data.starts_with(FILE_MAGIC_V1) {
        return Ok(Layout {
            start: FILE_MAGIC_V1.len(),
            compacted_end: FILE_MAGIC_V1.len(),
            current_format: false,
        });
    }
    if !data.starts_with(FILE_MAGIC) {
        return Err("it does not start with the journal's magic bytes".into());
    }
    let header = data
        .get(..FILE_HEADER)
        .ok_or("its file header is cut short")?;
    if crc32c(&header[0..28]) != u32_at(header, 28) {
        return Err("its file header does not check out".into());
    }
    let capacity = u64_at(header, 8);
    let compacted_end = u64_at(header, 16);
    if data.len() as u64 != capacity {
        return Err(format!(
            "it is {} bytes long but was made {capacity} bytes long: it was cut short or extended",
            data.len()
        ));
    }
    if compacted_end < FILE_HEADER as u64 || compacted_end > capacity {
        return Err(format!(
            "its header names offset {compacted_end} as the end of its compacted part, outside the file"
        ));
    }
    Ok(Layout {
        start: FILE_HEADER,
        compacted_end: compacted_end as usize,
        current_format: true,
    })
}

/// The entries of a journal file.
#[derive(Debug)]
struct Scan<'a> {
    entries: Vec<&'a [u8]>,
    torn_bytes: u64,
    /// Where the intact batches end.
    tail: usize,
    /// The last intact batch's sequence number.
    seq: u64,
    current_format: bool,
}

/// Reads every intact batch; see the module documentation for what counts
/// as a torn tail and what as corruption.
fn scan(data: &[u8]) -> Result<Scan<'_>, String> {
    let layout = layout(data)?;
    let mut entries = Vec::new();
    let mut pos = layout.start;
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
    let torn_bytes = torn_tail(data, pos, layout.compacted_end)?;
    Ok(Scan {
        entries,
        torn_bytes,
        tail: pos,
        seq: last_seq,
        current_format: layout.current_format,
    })
}

/// What follows the intact batches at `pos`: nothing (zeros), or a torn
/// last batch (its length is returned); anything else is corruption.
fn torn_tail(data: &[u8], pos: usize, compacted_end: usize) -> Result<u64, String> {
    if pos < compacted_end {
        return Err(format!(
            "the batch at offset {pos} does not check out, and it lies in the part a compaction wrote (up to offset {compacted_end}), which was complete and synced before it was put in place"
        ));
    }
    let rest = &data[pos..];
    let Some(last_data) = rest.iter().rposition(|&b| b != 0) else {
        return Ok(0);
    };
    let end = match header_at(data, pos) {
        Some(header) => pos + HEADER + header.len,
        None => pos + last_data + 1,
    };
    if end > data.len() || end - pos > HEADER + MAX_PAYLOAD {
        return Err(format!(
            "the batch at offset {pos} does not check out and would reach offset {end}, beyond any batch this journal writes"
        ));
    }
    if let Some(at) = data[end..].iter().position(|&b| b != 0) {
        return Err(format!(
            "the batch at offset {pos} does not check out and data follows it at offset {}: a written batch was damaged",
            end + at
        ));
    }
    if !has_unwritten_sector(data, pos, end) {
        return Err(format!(
            "the batch at offset {pos} does not check out although every sector of it was written: it was damaged after it was written (a write cut off by a crash leaves sectors unwritten)"
        ));
    }
    Ok(last_data as u64 + 1)
}

/// Whether a sector of `data[start..end]` (sectors counted from the start of
/// the file) holds only zeros.
fn has_unwritten_sector(data: &[u8], start: usize, end: usize) -> bool {
    let mut sector = start / SECTOR * SECTOR;
    while sector < end {
        let lo = sector.max(start);
        let hi = (sector + SECTOR).min(end);
        if data[lo..hi].iter().all(|&b| b == 0) {
            return true;
        }
        sector += SECTOR;
    }
    false
}

/// CRC-32C (Castagnoli), hardware-accelerated where the CPU has it.
fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
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

    const TEST_CAPACITY: usize = 64 * 1024;

    /// A journal file of `TEST_CAPACITY` bytes: the `compacted` batches as
    /// a compaction writes them, the `appended` batches after them, zeros
    /// to the end; with the `(start, end)` offsets of every batch.
    fn file_with(compacted: &[Vec<Op>], appended: &[Vec<Op>]) -> (Vec<u8>, Vec<(usize, usize)>) {
        let mut body = Vec::new();
        let mut spans = Vec::new();
        let mut compacted_end = FILE_HEADER;
        for (i, batch) in compacted.iter().chain(appended).enumerate() {
            let raw = encode_all(batch).unwrap();
            let refs: Vec<&[u8]> = raw.iter().map(Vec::as_slice).collect();
            let start = FILE_HEADER + body.len();
            body.extend(encode_batch(i as u64 + 1, &refs));
            spans.push((start, FILE_HEADER + body.len()));
            if i < compacted.len() {
                compacted_end = FILE_HEADER + body.len();
            }
        }
        let mut data = encode_file_header(TEST_CAPACITY as u64, compacted_end as u64).to_vec();
        data.extend(body);
        data.resize(TEST_CAPACITY, 0);
        (data, spans)
    }

    fn values(data: &[u8]) -> Result<Vec<String>, String> {
        Ok(scan(data)?
            .entries
            .iter()
            .map(|e| String::from_utf8(e.to_vec()).unwrap())
            .collect())
    }

    /// A value large enough that its batch spans several sectors.
    fn big(k: &str) -> Op {
        Op::Set(format!("{k}{}", "x".repeat(3000)), 1)
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
        let (data, spans) = file_with(&[vec![set("a", 1)]], &[vec![set("b", 2)], vec![big("c")]]);
        assert_eq!(values(&data).unwrap().len(), 3);
        let (start, end) = spans[2];
        // A sector in the middle of the last batch never written.
        let mut torn = data.clone();
        let sector = (start / SECTOR + 2) * SECTOR;
        torn[sector..sector + SECTOR].fill(0);
        let scanned = scan(&torn).unwrap();
        assert_eq!(scanned.entries.len(), 2);
        assert_eq!(scanned.torn_bytes, (end - start) as u64);
        // Its header's sector never written, the rest was.
        let mut torn = data.clone();
        torn[start / SECTOR * SECTOR..start].copy_from_slice(&data[start / SECTOR * SECTOR..start]);
        torn[start..(start / SECTOR + 1) * SECTOR].fill(0);
        assert_eq!(values(&torn).unwrap().len(), 2);
        // Cut off at a sector boundary.
        let mut torn = data.clone();
        torn[(start / SECTOR + 3) * SECTOR..end].fill(0);
        assert_eq!(values(&torn).unwrap().len(), 2);
    }

    #[test]
    fn a_written_batch_that_does_not_check_out_is_damage() {
        let (data, spans) = file_with(&[vec![set("a", 1)]], &[vec![set("b", 2)], vec![big("c")]]);
        // A flipped byte in the last, large batch: every sector was written.
        let mut bad = data.clone();
        bad[spans[2].0 + 1000] ^= 0x01;
        let err = scan(&bad).unwrap_err();
        assert!(err.contains("every sector"), "{err}");
        // A flipped byte in a last batch that fits one sector.
        let (data, spans) = file_with(&[vec![set("a", 1)]], &[vec![set("b", 2)]]);
        let mut bad = data.clone();
        bad[spans[1].1 - 3] ^= 0x01;
        assert!(scan(&bad).is_err());
        // Its header damaged.
        let mut bad = data.clone();
        bad[spans[1].0 + 9] ^= 0x01;
        assert!(scan(&bad).is_err());
    }

    #[test]
    fn damage_inside_the_compacted_part_is_corruption() {
        let (data, spans) = file_with(&[vec![set("a", 1), big("b"), set("c", 3)]], &[]);
        let (start, end) = spans[0];
        let mut bad = data.clone();
        bad[end - 3] ^= 0x01;
        let err = scan(&bad).unwrap_err();
        assert!(err.contains("compaction"), "{err}");
        // Even in the shape of a torn write.
        let mut bad = data.clone();
        let sector = (start / SECTOR + 2) * SECTOR;
        bad[sector..sector + SECTOR].fill(0);
        assert!(scan(&bad).unwrap_err().contains("compaction"));
    }

    #[test]
    fn damage_before_a_later_batch_is_corruption() {
        let (data, spans) = file_with(
            &[],
            &[vec![set("a", 1)], vec![set("b", 2)], vec![set("c", 3)]],
        );
        let mut bad = data.clone();
        bad[spans[1].0 + HEADER + 6] ^= 0x01;
        let err = scan(&bad).unwrap_err();
        assert!(err.contains("follows it"), "{err}");
        let mut bad = data.clone();
        bad[spans[1].0 + 9] ^= 0x01;
        assert!(scan(&bad).is_err());
        assert!(scan(b"not a journal").is_err());
    }

    #[test]
    fn a_file_of_another_length_or_with_a_bad_header_is_corruption() {
        let (data, _) = file_with(&[vec![set("a", 1)]], &[vec![set("b", 2)]]);
        let err = scan(&data[..data.len() - SECTOR]).unwrap_err();
        assert!(err.contains("cut short"), "{err}");
        let mut longer = data.clone();
        longer.extend([0; SECTOR]);
        assert!(scan(&longer).is_err());
        let mut bad = data.clone();
        bad[10] ^= 0x01;
        assert!(scan(&bad).unwrap_err().contains("header"));
    }

    #[test]
    fn files_of_the_earlier_format_are_read_and_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("journal");
        let mut data = FILE_MAGIC_V1.to_vec();
        for (i, op) in [set("a", 1), set("b", 2)].into_iter().enumerate() {
            let raw = serde_json::to_vec(&op).unwrap();
            data.extend(encode_batch(i as u64 + 1, &[&raw]));
        }
        data.resize(1 << 20, 0);
        fs::write(&path, &data).unwrap();
        let (journal, recovered) = Journal::<Kv>::open(&path, vec![]).unwrap();
        assert_eq!(recovered.entries, 2);
        assert_eq!(journal.state().0.len(), 2);
        drop(journal);
        assert!(fs::read(&path).unwrap().starts_with(FILE_MAGIC));
    }

    #[test]
    fn a_damaged_journal_refuses_to_open() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("journal");
        let (mut data, spans) = file_with(&[vec![set("a", 1)]], &[vec![set("b", 2)]]);
        data[spans[0].0 + HEADER + 6] ^= 0x01;
        fs::write(&path, &data).unwrap();
        let err = Journal::<Kv>::open(&path, vec![]).err().unwrap();
        assert!(matches!(err, OpenError::Damaged { .. }), "{err}");
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
        let (mut data, spans) = file_with(&[vec![set("a", 1)]], &[vec![big("b")]]);
        let sector = (spans[1].0 / SECTOR + 2) * SECTOR;
        data[sector..sector + SECTOR].fill(0);
        fs::write(&path, &data).unwrap();
        let (journal, recovered) = Journal::<Kv>::open(&path, vec![]).unwrap();
        assert_eq!(recovered.entries, 1);
        assert!(recovered.torn_bytes > 0);
        assert_eq!(journal.state().0, BTreeMap::from([("a".to_string(), 1)]));
    }
}
