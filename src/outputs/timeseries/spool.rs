//! Durable write-ahead spool for time-series lines (modelled on Vector's disk_v2 buffer).
//!
//! Layout under `<data_dir>/spool/`:
//! - segment files `00000000000000000001.seg`, `...0002.seg`, append-only, rotated at
//!   `segment_bytes` (16 MiB by default), each a sequence of records
//!   `[len u32 LE][crc32(payload) u32 LE][payload]`; a payload is one line-protocol chunk;
//! - `ledger`: the reader's acknowledged position, rewritten as tmp + rename.
//!
//! The writer (the daemon's ack thread, synchronous) appends with one positional write
//! per record and calls [`SpoolWriter::sync`] once per group commit. The reader (the async
//! sink) only ever reads up to the writer's completed position, published through the
//! shared state below, and is woken by a [`Notify`].
//!
//! The ledger is not fsynced: losing its latest version to a power cut only makes the
//! reader replay batches the TSDB already has, and replays are idempotent there (same
//! series + timestamp overwrites). Segment data is what must survive, and `sync` covers it.
//!
//! Bound: when appending would take the spool over `max_bytes`, the oldest segment is
//! dropped (the reader is moved past it) and its unacknowledged lines are counted as
//! `evlounge_tsdb_dropped_points_total{reason="spool_full"}`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Default bound (`influx.spool_max_bytes`).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Default segment size: large enough that rotation is rare, small enough that dropping
/// one segment under the bound loses a small slice of history.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;
const HEADER: u64 = 8;
/// A length above this can only be corruption: no commit produces a 64 MiB chunk.
pub const MAX_RECORD: usize = 64 << 20;
const LEDGER: &str = "ledger";
const LEDGER_TMP: &str = "ledger.tmp";
const LEDGER_MAGIC: &[u8; 4] = b"EVL1";

/// A place in the spool: the segment id and a byte offset in it. Orders as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct SpoolOptions {
    pub max_bytes: u64,
    pub segment_bytes: u64,
}

impl SpoolOptions {
    /// Segments are a fraction of the bound so dropping one under pressure loses little.
    pub fn new(max_bytes: u64) -> Self {
        SpoolOptions {
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(4096, DEFAULT_SEGMENT_BYTES),
        }
    }
}

/// Counters the daemon exposes; kept here (not only in `metrics`) so tests and `/readyz`
/// can read them without a recorder.
#[derive(Debug, Default)]
struct Counters {
    torn_tails: AtomicU64,
    torn_bytes: AtomicU64,
    corrupt_records: AtomicU64,
    dropped_points: AtomicU64,
    dropped_bytes: AtomicU64,
}

struct State {
    /// Segment id -> committed bytes in it (for the write segment: the end of the last
    /// completed record; the reader never reads past it).
    segments: BTreeMap<u64, u64>,
    write: Position,
    ack: Position,
    bytes: u64,
}

struct Shared {
    dir: PathBuf,
    opts: SpoolOptions,
    // A blocking mutex held only for in-memory bookkeeping (the writer's `append` takes it
    // twice per record); never across a file-system call or an `.await`.
    state: Mutex<State>,
    // Serializes the ledger's writers (the reader's ack, the writer's drop of the oldest
    // segment when the spool is full) across their file work; taken before `state`.
    ledger: Mutex<()>,
    notify: Notify,
    counters: Counters,
}

/// Cheap read-only view for `/metrics` and tests.
#[derive(Clone)]
pub struct SpoolStats(Arc<Shared>);

impl SpoolStats {
    /// Bytes in segment files on disk (acknowledged records of the oldest segment
    /// included until that segment is deleted).
    pub fn bytes(&self) -> u64 {
        self.0.state.lock().bytes
    }
    pub fn segments(&self) -> usize {
        self.0.state.lock().segments.len()
    }
    /// True when every completed record has been acknowledged.
    pub fn is_drained(&self) -> bool {
        let st = self.0.state.lock();
        st.ack >= st.write
    }
    /// Torn or corrupt tails truncated from the last segment at open.
    pub fn torn_tails(&self) -> u64 {
        self.0.counters.torn_tails.load(Ordering::Relaxed)
    }
    pub fn torn_bytes(&self) -> u64 {
        self.0.counters.torn_bytes.load(Ordering::Relaxed)
    }
    /// Corrupt records met while reading (the rest of their segment is skipped).
    pub fn corrupt_records(&self) -> u64 {
        self.0.counters.corrupt_records.load(Ordering::Relaxed)
    }
    /// Lines dropped because the spool was full.
    pub fn dropped_points(&self) -> u64 {
        self.0.counters.dropped_points.load(Ordering::Relaxed)
    }
    pub fn dropped_bytes(&self) -> u64 {
        self.0.counters.dropped_bytes.load(Ordering::Relaxed)
    }
}

pub struct Spool;

impl Spool {
    /// Opens (or creates) the spool in `dir` with the default segment size.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<(SpoolWriter, SpoolReader)> {
        Self::open_with(dir, SpoolOptions::new(max_bytes))
    }

    pub fn open_with(dir: &Path, opts: SpoolOptions) -> io::Result<(SpoolWriter, SpoolReader)> {
        fs::create_dir_all(dir)?;
        let counters = Counters::default();
        let mut ids = list_segments(dir)?;
        let ledger = read_ledger(dir);

        // Only the last segment can have a torn tail: older ones were complete (and
        // synced) when the writer rotated away from them.
        let mut write_len = 0;
        if let Some(&last) = ids.last() {
            let path = segment_path(dir, last);
            let (valid, len) = scan_valid_prefix(&path)?;
            if valid < len {
                tracing::warn!(
                    segment = last,
                    valid_bytes = valid,
                    torn_bytes = len - valid,
                    "tsdb spool: truncating a torn or corrupt tail record"
                );
                counters.torn_tails.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("evlounge_tsdb_spool_corrupt_total", "kind" => "torn_tail")
                    .increment(1);
                counters
                    .torn_bytes
                    .fetch_add(len - valid, Ordering::Relaxed);
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(valid)?;
                f.sync_all()?;
            }
            write_len = valid;
        }

        // Segments wholly before the ledger were acknowledged; a crash between the ledger
        // rename and the unlink can leave them behind.
        if let Some(l) = ledger {
            for &id in ids.iter().filter(|&&id| id < l.segment) {
                remove_segment(dir, id)?;
            }
            ids.retain(|&id| id >= l.segment);
            if ids.is_empty() {
                write_len = 0;
            }
        }

        let mut segments = BTreeMap::new();
        for (i, &id) in ids.iter().enumerate() {
            let len = if i + 1 == ids.len() {
                write_len
            } else {
                fs::metadata(segment_path(dir, id))?.len()
            };
            segments.insert(id, len);
        }

        let (write_seg, file) = match segments.last_key_value() {
            Some((&id, _)) => (
                id,
                OpenOptions::new().write(true).open(segment_path(dir, id))?,
            ),
            None => {
                let id = ledger.map_or(1, |l| l.segment + 1);
                let f = create_segment(dir, id)?;
                segments.insert(id, 0);
                write_len = 0;
                (id, f)
            }
        };

        let first = *segments.keys().next().unwrap_or(&write_seg);
        let ack = match ledger {
            Some(l) if segments.contains_key(&l.segment) => Position {
                segment: l.segment,
                // A power cut can lose a synced-later tail the ledger already covers;
                // clamp so records appended from here on are not mistaken as acked.
                offset: l.offset.min(segments[&l.segment]),
            },
            _ => Position {
                segment: first,
                offset: 0,
            },
        };
        let bytes = segments.values().sum();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            opts,
            ledger: Mutex::new(()),
            state: Mutex::new(State {
                segments,
                write: Position {
                    segment: write_seg,
                    offset: write_len,
                },
                ack,
                bytes,
            }),
            notify: Notify::new(),
            counters,
        });
        publish_gauges(&shared.state.lock());
        let writer = SpoolWriter {
            shared: shared.clone(),
            file,
            seg: write_seg,
            len: write_len,
            buf: Vec::new(),
            dir_dirty: false,
        };
        let reader = SpoolReader {
            shared,
            cursor: ack,
            file: None,
            peeked: None,
            unlinked: Vec::new(),
        };
        Ok((writer, reader))
    }
}

/// The appending half; owned by one synchronous thread.
pub struct SpoolWriter {
    shared: Arc<Shared>,
    file: File,
    seg: u64,
    len: u64,
    buf: Vec<u8>,
    /// A segment was created since the last `sync`: its directory entry needs a sync too.
    dir_dirty: bool,
}

impl SpoolWriter {
    /// Appends one record (a chunk of `\n`-terminated lines). The bytes are in the OS page
    /// cache when this returns, so they survive a process crash; call [`sync`] for power
    /// loss.
    ///
    /// [`sync`]: SpoolWriter::sync
    pub fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        if lines.len() > MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "tsdb spool: record larger than 64 MiB",
            ));
        }
        let rec_len = HEADER + lines.len() as u64;
        if self.len > 0 && self.len + rec_len > self.shared.opts.segment_bytes {
            self.rotate()?;
        }
        if !self.make_room(rec_len)? {
            let points = count_lines(lines);
            tracing::warn!(
                bytes = rec_len,
                points,
                "tsdb spool: record larger than the whole spool bound, dropped"
            );
            self.count_dropped(points, rec_len);
            return Ok(());
        }
        self.buf.clear();
        self.buf
            .extend_from_slice(&(lines.len() as u32).to_le_bytes());
        self.buf
            .extend_from_slice(&crc32fast::hash(lines).to_le_bytes());
        self.buf.extend_from_slice(lines);
        if let Err(e) = self.file.write_all_at(&self.buf, self.len) {
            // Leave no half record behind for the next append to follow.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += rec_len;
        {
            let mut st = self.shared.state.lock();
            st.segments.insert(self.seg, self.len);
            st.write = Position {
                segment: self.seg,
                offset: self.len,
            };
            st.bytes += rec_len;
            publish_gauges(&st);
        }
        // A single consumer: `notify_one` stores a permit if the reader is not waiting yet.
        self.shared.notify.notify_one();
        Ok(())
    }

    /// fdatasync of the current segment (and the directory when a segment was created):
    /// once per group commit, before the MQTT acks go out.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        if self.dir_dirty {
            File::open(&self.shared.dir)?.sync_all()?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats(self.shared.clone())
    }

    fn rotate(&mut self) -> io::Result<()> {
        // The old segment is never written again: make it durable now so `sync` only ever
        // has to care about the current file.
        self.file.sync_data()?;
        let id = self.seg + 1;
        self.file = create_segment(&self.shared.dir, id)?;
        self.seg = id;
        self.len = 0;
        self.dir_dirty = true;
        let mut st = self.shared.state.lock();
        st.segments.insert(id, 0);
        st.write = Position {
            segment: id,
            offset: 0,
        };
        publish_gauges(&st);
        Ok(())
    }

    /// Drops oldest segments until `rec_len` more bytes fit. Returns false when the record
    /// cannot fit even in an empty spool.
    fn make_room(&mut self, rec_len: u64) -> io::Result<bool> {
        let max = self.shared.opts.max_bytes;
        let fits = |st: &State| st.bytes + rec_len <= max;
        // The common case without the ledger lock: the reader's ack may hold that one over
        // its file work, and an append must not wait for it.
        if fits(&self.shared.state.lock()) {
            return Ok(true);
        }
        loop {
            let ledger = self.shared.ledger.lock();
            let mut st = self.shared.state.lock();
            if fits(&st) {
                return Ok(true);
            }
            let Some((&oldest, &size)) = st.segments.first_key_value() else {
                return Ok(false);
            };
            if oldest == self.seg {
                if self.len == 0 {
                    return Ok(false);
                }
                // Everything is in the write segment: close it so it can be dropped.
                drop(st);
                drop(ledger);
                self.rotate()?;
                continue;
            }
            let from = if st.ack.segment == oldest {
                st.ack.offset
            } else {
                0
            };
            let next = st
                .segments
                .range(oldest + 1..)
                .next()
                .map_or(self.seg, |(&id, _)| id);
            st.segments.remove(&oldest);
            st.bytes -= size;
            if st.ack.segment <= oldest {
                st.ack = Position {
                    segment: next,
                    offset: 0,
                };
            }
            let ack = st.ack;
            publish_gauges(&st);
            drop(st);
            // The file work under the ledger lock only, so the reader's ack cannot
            // interleave (nor unlink the segment before it is counted).
            let points = count_lines_in_segment(&self.shared.dir, oldest, from, size);
            let written = write_ledger(&self.shared.dir, ack);
            let unlink = remove_segment(&self.shared.dir, oldest);
            drop(ledger);
            tracing::warn!(
                segment = oldest,
                bytes = size,
                points,
                max_bytes = self.shared.opts.max_bytes,
                "tsdb spool full: dropped the oldest segment"
            );
            self.count_dropped(points, size - from.min(size));
            written?;
            unlink?;
        }
    }

    fn count_dropped(&self, points: u64, bytes: u64) {
        let c = &self.shared.counters;
        c.dropped_points.fetch_add(points, Ordering::Relaxed);
        c.dropped_bytes.fetch_add(bytes, Ordering::Relaxed);
        metrics::counter!("evlounge_tsdb_dropped_points_total", "reason" => "spool_full")
            .increment(points);
    }
}

/// A batch of lines read from the spool, plus where it ends (what to ack once sent).
#[derive(Debug, Default)]
pub struct Batch {
    pub body: Vec<u8>,
    pub lines: usize,
    pub end: Option<Position>,
}

impl Batch {
    pub fn clear(&mut self) {
        self.body.clear();
        self.lines = 0;
        self.end = None;
    }
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }
}

struct Peeked {
    at: Position,
    payload: Vec<u8>,
    lines: usize,
}

/// The reading half, owned by the sink task.
pub struct SpoolReader {
    shared: Arc<Shared>,
    /// Next record to read (ahead of the ack while a batch is in flight).
    cursor: Position,
    file: Option<(u64, File)>,
    /// A record read but not taken because the batch was full.
    peeked: Option<Peeked>,
    /// Acknowledged segments whose files are still to delete (a ledger write or an unlink
    /// failed): retried with the next ack, so none is left behind until a restart.
    unlinked: Vec<u64>,
}

impl SpoolReader {
    /// Reads the next batch of unread records: at least one record, then whole records
    /// while under `max_lines` and `max_bytes`. `None` when nothing is available.
    pub fn read_batch(
        &mut self,
        max_lines: usize,
        max_bytes: usize,
    ) -> io::Result<Option<(Vec<u8>, Position)>> {
        let mut b = Batch::default();
        self.fill(&mut b, max_lines, max_bytes)?;
        Ok(b.end.map(|end| (b.body, end)))
    }

    /// Adds whole records to `batch` (always at least one if any is available and the
    /// batch is empty). Returns true when it stopped on a limit with more data waiting.
    pub fn fill(
        &mut self,
        batch: &mut Batch,
        max_lines: usize,
        max_bytes: usize,
    ) -> io::Result<bool> {
        loop {
            let (limit, is_write_seg, next_seg) = {
                let st = self.shared.state.lock();
                if self.cursor < st.ack {
                    // The writer dropped segments under us (spool full).
                    self.cursor = st.ack;
                }
                match st.segments.get(&self.cursor.segment) {
                    Some(&limit) => (
                        limit,
                        self.cursor.segment == st.write.segment,
                        st.segments
                            .range(self.cursor.segment + 1..)
                            .next()
                            .map(|(&id, _)| id),
                    ),
                    None => {
                        // Dropped or never existed: go to the next one that does.
                        match st.segments.range(self.cursor.segment..).next() {
                            Some((&id, _)) => {
                                self.cursor = Position {
                                    segment: id,
                                    offset: 0,
                                };
                                continue;
                            }
                            None => return Ok(false),
                        }
                    }
                }
            };
            if self.cursor.offset >= limit {
                if is_write_seg {
                    return Ok(false);
                }
                self.cursor = Position {
                    segment: next_seg.unwrap_or(self.cursor.segment + 1),
                    offset: 0,
                };
                continue;
            }
            let rec = match self.peeked.take() {
                Some(p) if p.at == self.cursor => Ok(p),
                _ => self.read_record(limit),
            };
            let rec = match rec {
                Ok(r) => r,
                Err(RecordError::Io(e)) => return Err(e),
                Err(RecordError::Corrupt(why)) => {
                    self.shared
                        .counters
                        .corrupt_records
                        .fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("evlounge_tsdb_spool_corrupt_total", "kind" => "record")
                        .increment(1);
                    tracing::warn!(
                        segment = self.cursor.segment,
                        offset = self.cursor.offset,
                        why,
                        "tsdb spool: corrupt record, skipping the rest of its segment"
                    );
                    self.cursor.offset = limit;
                    if !is_write_seg {
                        self.cursor = Position {
                            segment: next_seg.unwrap_or(self.cursor.segment + 1),
                            offset: 0,
                        };
                    }
                    // Even an empty batch carries the skip, so acking it retires the
                    // corrupt segment instead of re-reading it after every restart.
                    batch.end = Some(self.cursor);
                    continue;
                }
            };
            let extra_nl = usize::from(rec.payload.last() != Some(&b'\n'));
            if !batch.is_empty()
                && (batch.lines + rec.lines > max_lines
                    || batch.body.len() + rec.payload.len() + extra_nl > max_bytes)
            {
                self.peeked = Some(rec);
                return Ok(true);
            }
            batch.body.extend_from_slice(&rec.payload);
            if extra_nl == 1 {
                // Keeps record boundaries from gluing two lines together.
                batch.body.push(b'\n');
            }
            batch.lines += rec.lines;
            self.cursor.offset += HEADER + rec.payload.len() as u64;
            batch.end = Some(self.cursor);
        }
    }

    /// Waits until the writer signals new data (returns at once if it did since the last
    /// wait). Spurious wake-ups are possible: call [`fill`](Self::fill) again.
    pub async fn wait(&self) {
        self.shared.notify.notified().await;
    }

    /// Acknowledges everything before `pos`: advances the ledger and deletes segments
    /// that are wholly acknowledged.
    pub fn ack(&mut self, pos: Position) -> io::Result<()> {
        // The file work (ledger, unlinks) happens after the state lock is released: the
        // ack thread's `append` takes that lock, and must not wait behind file-system
        // calls on the sink's task. The ledger lock, held throughout, keeps the writer's
        // drop of the oldest segment (spool full) from interleaving: ledger writes land in
        // the order their positions were decided. The segment being written is never removed.
        let _ledger = self.shared.ledger.lock();
        let (ack, removed) = {
            let mut st = self.shared.state.lock();
            if pos <= st.ack {
                return Ok(());
            }
            st.ack = pos;
            let mut removed = Vec::new();
            while let Some((&id, &size)) = st.segments.first_key_value() {
                let done = id < st.ack.segment
                    || (id == st.ack.segment && st.ack.offset >= size && id != st.write.segment);
                if !done {
                    break;
                }
                st.segments.remove(&id);
                st.bytes -= size;
                removed.push(id);
                if id == st.ack.segment {
                    let next = st
                        .segments
                        .keys()
                        .next()
                        .copied()
                        .unwrap_or(st.write.segment);
                    st.ack = Position {
                        segment: next,
                        offset: 0,
                    };
                }
            }
            publish_gauges(&st);
            (st.ack, removed)
        };
        // The ledger goes first: a crash between the two leaves an acknowledged segment
        // that the next open deletes, never a ledger pointing into deleted data. Should
        // either fail, the segments stay listed for the next ack to delete.
        self.unlinked.extend(removed);
        write_ledger(&self.shared.dir, ack)?;
        let mut failed = None;
        let dir = &self.shared.dir;
        self.unlinked.retain(|&id| match remove_segment(dir, id) {
            Ok(()) => false,
            Err(e) => {
                failed.get_or_insert(e);
                true
            }
        });
        failed.map_or(Ok(()), Err)
    }

    /// Forgets what was read but not acknowledged: the next read starts at the ack.
    pub fn rewind(&mut self) {
        self.cursor = self.shared.state.lock().ack;
        self.peeked = None;
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats(self.shared.clone())
    }

    fn read_record(&mut self, limit: u64) -> Result<Peeked, RecordError> {
        let seg = self.cursor.segment;
        if self.file.as_ref().map(|(id, _)| *id) != Some(seg) {
            let f = File::open(segment_path(&self.shared.dir, seg)).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    RecordError::Corrupt("segment file missing")
                } else {
                    RecordError::Io(e)
                }
            })?;
            self.file = Some((seg, f));
        }
        let Some((_, f)) = self.file.as_ref() else {
            return Err(RecordError::Corrupt("segment file missing"));
        };
        let off = self.cursor.offset;
        if off + HEADER > limit {
            return Err(RecordError::Corrupt("short header"));
        }
        let mut h = [0u8; HEADER as usize];
        read_exact_at(f, &mut h, off)?;
        let (len, crc) = parse_header(&h);
        if len > MAX_RECORD || off + HEADER + len as u64 > limit {
            return Err(RecordError::Corrupt("bad length"));
        }
        let mut payload = vec![0u8; len];
        read_exact_at(f, &mut payload, off + HEADER)?;
        if crc32fast::hash(&payload) != crc {
            return Err(RecordError::Corrupt("crc mismatch"));
        }
        let lines = count_lines(&payload) as usize;
        Ok(Peeked {
            at: self.cursor,
            payload,
            lines,
        })
    }
}

enum RecordError {
    Io(io::Error),
    Corrupt(&'static str),
}

fn read_exact_at(f: &File, buf: &mut [u8], off: u64) -> Result<(), RecordError> {
    f.read_exact_at(buf, off).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            // Shorter than the ledger of sizes says: the file was truncated under us.
            RecordError::Corrupt("truncated segment")
        } else {
            RecordError::Io(e)
        }
    })
}

fn parse_header(h: &[u8; 8]) -> (usize, u32) {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (len, crc)
}

/// Counts lines; a final line without `\n` counts too.
fn count_lines(b: &[u8]) -> u64 {
    let n = b.iter().filter(|&&c| c == b'\n').count() as u64;
    n + u64::from(!b.is_empty() && b.last() != Some(&b'\n'))
}

/// Lines in the valid records of a segment from `from`; best effort (for a metric).
fn count_lines_in_segment(dir: &Path, id: u64, from: u64, size: u64) -> u64 {
    let Ok(f) = File::open(segment_path(dir, id)) else {
        return 0;
    };
    let mut off = from;
    let mut lines = 0;
    let mut h = [0u8; HEADER as usize];
    let mut payload = Vec::new();
    while off + HEADER <= size {
        if f.read_exact_at(&mut h, off).is_err() {
            break;
        }
        let (len, _) = parse_header(&h);
        if len > MAX_RECORD || off + HEADER + len as u64 > size {
            break;
        }
        payload.resize(len, 0);
        if f.read_exact_at(&mut payload, off + HEADER).is_err() {
            break;
        }
        lines += count_lines(&payload);
        off += HEADER + len as u64;
    }
    lines
}

/// Returns (end of the last valid record, file length).
fn scan_valid_prefix(path: &Path) -> io::Result<(u64, u64)> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut off = 0u64;
    let mut h = [0u8; HEADER as usize];
    let mut payload = Vec::new();
    while off + HEADER <= len {
        f.read_exact_at(&mut h, off)?;
        let (plen, crc) = parse_header(&h);
        if plen > MAX_RECORD || off + HEADER + plen as u64 > len {
            break;
        }
        payload.resize(plen, 0);
        f.read_exact_at(&mut payload, off + HEADER)?;
        if crc32fast::hash(&payload) != crc {
            break;
        }
        off += HEADER + plen as u64;
    }
    Ok((off, len))
}

pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name
            .strip_suffix(".seg")
            .and_then(|s| s.parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn create_segment(dir: &Path, id: u64) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(segment_path(dir, id))
}

fn remove_segment(dir: &Path, id: u64) -> io::Result<()> {
    match fs::remove_file(segment_path(dir, id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn read_ledger(dir: &Path) -> Option<Position> {
    let b = fs::read(dir.join(LEDGER)).ok()?;
    if b.len() != 24 || &b[..4] != LEDGER_MAGIC {
        tracing::warn!("tsdb spool: unreadable ledger, replaying from the oldest segment");
        return None;
    }
    let crc = u32::from_le_bytes(b[20..24].try_into().ok()?);
    if crc32fast::hash(&b[4..20]) != crc {
        tracing::warn!("tsdb spool: ledger checksum mismatch, replaying from the oldest segment");
        return None;
    }
    Some(Position {
        segment: u64::from_le_bytes(b[4..12].try_into().ok()?),
        offset: u64::from_le_bytes(b[12..20].try_into().ok()?),
    })
}

fn write_ledger(dir: &Path, pos: Position) -> io::Result<()> {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(LEDGER_MAGIC);
    b.extend_from_slice(&pos.segment.to_le_bytes());
    b.extend_from_slice(&pos.offset.to_le_bytes());
    let crc = crc32fast::hash(&b[4..20]);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(LEDGER_TMP);
    File::create(&tmp)?.write_all(&b)?;
    fs::rename(tmp, dir.join(LEDGER))
}

fn publish_gauges(st: &State) {
    metrics::gauge!("evlounge_tsdb_spool_bytes").set(st.bytes as f64);
    metrics::gauge!("evlounge_tsdb_spool_segments").set(st.segments.len() as f64);
}

#[cfg(test)]
mod tests;
