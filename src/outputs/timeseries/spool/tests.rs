use super::*;
use proptest::prelude::*;

fn opts(max_bytes: u64, segment_bytes: u64) -> SpoolOptions {
    SpoolOptions {
        max_bytes,
        segment_bytes,
    }
}

fn rec(i: usize, lines: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for j in 0..lines {
        v.extend_from_slice(format!("m,r={i} f={j} {}\n", i * 100 + j).as_bytes());
    }
    v
}

fn read_all(r: &mut SpoolReader) -> (Vec<u8>, Option<Position>) {
    let mut b = Batch::default();
    while r.fill(&mut b, usize::MAX, usize::MAX).unwrap() {}
    (b.body, b.end)
}

fn seg_files(dir: &Path) -> Vec<u64> {
    list_segments(dir).unwrap()
}

/// Nine one-line records in three segments of three: (writer, reader, segment size).
fn three_full_segments(dir: &Path) -> (SpoolWriter, SpoolReader, u64) {
    let seg = 3 * (8 + rec(1, 1).len() as u64);
    let (mut w, r) = Spool::open_with(dir, opts(1 << 20, seg)).unwrap();
    for i in 0..9 {
        w.append(&rec(i, 1)).unwrap();
    }
    assert_eq!(seg_files(dir), vec![1, 2, 3]);
    (w, r, seg)
}

#[test]
fn record_format_on_disk() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _r) = Spool::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
    w.append(b"m f=1 1\n").unwrap();
    w.sync().unwrap();
    let raw = fs::read(segment_path(d.path(), 1)).unwrap();
    assert_eq!(&raw[0..4], &8u32.to_le_bytes());
    assert_eq!(&raw[4..8], &crc32fast::hash(b"m f=1 1\n").to_le_bytes());
    assert_eq!(&raw[8..], b"m f=1 1\n");
    assert_eq!(w.stats().bytes(), 16);
}

#[test]
fn reads_what_was_appended_and_survives_reopen_until_acked() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut w, mut r) = Spool::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
        assert!(r.read_batch(10, 1 << 20).unwrap().is_none());
        w.append(&rec(1, 2)).unwrap();
        w.append(&rec(2, 2)).unwrap();
        let (body, pos) = r.read_batch(3, 1 << 20).unwrap().unwrap();
        // Whole records only: the second would exceed 3 lines.
        assert_eq!(body, rec(1, 2));
        r.ack(pos).unwrap();
        // Read but never acked: must come back after reopen.
        let (body, _) = r.read_batch(10, 1 << 20).unwrap().unwrap();
        assert_eq!(body, rec(2, 2));
    }
    let (_w, mut r) = Spool::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
    let (body, _) = read_all(&mut r);
    assert_eq!(body, rec(2, 2));
}

#[test]
fn a_record_larger_than_the_batch_is_still_read() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, mut r) = Spool::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
    w.append(&rec(1, 50)).unwrap();
    let (body, _) = r.read_batch(10, 64).unwrap().unwrap();
    assert_eq!(body, rec(1, 50));
}

#[test]
fn torn_tail_is_truncated_counted_and_appending_continues() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut w, _r) = Spool::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
        w.append(&rec(1, 3)).unwrap();
        w.append(&rec(2, 3)).unwrap();
    }
    let path = segment_path(d.path(), 1);
    let full = fs::metadata(&path).unwrap().len();
    // Cut the second record in the middle of its payload (a crash mid-write).
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(full - 5).unwrap();
    drop(f);
    let (mut w, mut r) = Spool::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
    let stats = w.stats();
    assert_eq!(stats.torn_tails(), 1);
    assert_eq!(stats.torn_bytes(), full - 5 - (8 + rec(1, 3).len() as u64));
    w.append(&rec(3, 1)).unwrap();
    let (body, _) = read_all(&mut r);
    assert_eq!(body, [rec(1, 3), rec(3, 1)].concat());
}

#[test]
fn torn_header_and_crc_mismatch_tails() {
    for damage in ["short_header", "crc"] {
        let d = tempfile::tempdir().unwrap();
        {
            let (mut w, _r) = Spool::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
            w.append(&rec(1, 1)).unwrap();
            w.append(&rec(2, 1)).unwrap();
        }
        let path = segment_path(d.path(), 1);
        let mut raw = fs::read(&path).unwrap();
        let second = 8 + rec(1, 1).len();
        match damage {
            "short_header" => raw.truncate(second + 3),
            _ => {
                let last = raw.len() - 2;
                raw[last] ^= 0xff;
            }
        }
        fs::write(&path, &raw).unwrap();
        let (_w, mut r) = Spool::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(r.stats().torn_tails(), 1, "{damage}");
        assert_eq!(read_all(&mut r).0, rec(1, 1), "{damage}");
        assert_eq!(fs::metadata(&path).unwrap().len(), second as u64);
    }
}

#[test]
fn corrupt_record_in_an_older_segment_skips_to_the_next_segment() {
    let d = tempfile::tempdir().unwrap();
    let r1 = rec(1, 2);
    let seg = 2 * (8 + r1.len() as u64);
    {
        let (mut w, _r) = Spool::open_with(d.path(), opts(1 << 20, seg)).unwrap();
        for i in 1..=6 {
            w.append(&rec(i, 2)).unwrap();
        }
    }
    assert_eq!(seg_files(d.path()), vec![1, 2, 3]);
    // Flip a payload byte of the first record of segment 1.
    let path = segment_path(d.path(), 1);
    let mut raw = fs::read(&path).unwrap();
    raw[10] ^= 0x55;
    fs::write(&path, &raw).unwrap();
    let (_w, mut r) = Spool::open_with(d.path(), opts(1 << 20, seg)).unwrap();
    let (body, end) = read_all(&mut r);
    // Record 2 was fine but follows garbage in the same segment: never replayed blind.
    assert_eq!(body, [rec(3, 2), rec(4, 2), rec(5, 2), rec(6, 2)].concat());
    assert_eq!(r.stats().corrupt_records(), 1);
    r.ack(end.unwrap()).unwrap();
    assert_eq!(seg_files(d.path()), vec![3]);
}

#[test]
fn rotation_and_deletion_after_ack() {
    let d = tempfile::tempdir().unwrap();
    let (w, mut r, seg) = three_full_segments(d.path());
    assert_eq!(w.stats().segments(), 3);
    // Ack part of segment 1: nothing deleted yet.
    let (_, p) = r.read_batch(2, usize::MAX).unwrap().unwrap();
    r.ack(p).unwrap();
    assert_eq!(seg_files(d.path()), vec![1, 2, 3]);
    // Ack to the end of segment 2: 1 and 2 go.
    let (body, p) = r.read_batch(4, usize::MAX).unwrap().unwrap();
    assert_eq!(body, (2..6).map(|i| rec(i, 1)).collect::<Vec<_>>().concat());
    r.ack(p).unwrap();
    assert_eq!(seg_files(d.path()), vec![3]);
    assert_eq!(w.stats().bytes(), seg);
    // The write segment stays even when fully acked.
    let (_, p) = r.read_batch(100, usize::MAX).unwrap().unwrap();
    r.ack(p).unwrap();
    assert_eq!(seg_files(d.path()), vec![3]);
    assert!(w.stats().is_drained());
    // And survives a reopen with nothing to replay.
    drop((w, r));
    let (_w, mut r) = Spool::open_with(d.path(), opts(1 << 20, seg)).unwrap();
    assert!(r.read_batch(100, usize::MAX).unwrap().is_none());
}

#[test]
fn segments_of_a_failed_ledger_write_are_deleted_by_the_next_ack() {
    let d = tempfile::tempdir().unwrap();
    let (w, mut r, seg) = three_full_segments(d.path());
    // The ledger cannot be replaced (a directory in its place): the ack fails, segment
    // 1's file stays.
    std::fs::create_dir(d.path().join(LEDGER)).unwrap();
    let (_, p) = r.read_batch(3, usize::MAX).unwrap().unwrap();
    assert!(r.ack(p).is_err());
    assert_eq!(seg_files(d.path()), vec![1, 2, 3]);
    // Writable again: the next ack deletes it along with its own.
    std::fs::remove_dir(d.path().join(LEDGER)).unwrap();
    let (_, p) = r.read_batch(3, usize::MAX).unwrap().unwrap();
    r.ack(p).unwrap();
    assert_eq!(seg_files(d.path()), vec![3]);
    assert_eq!(w.stats().bytes(), seg);
}

#[test]
fn full_spool_drops_the_oldest_segment_and_counts_its_points() {
    let d = tempfile::tempdir().unwrap();
    let one = 8 + rec(1, 4).len() as u64;
    // Two records per segment, room for three segments.
    let (mut w, mut r) = Spool::open_with(d.path(), opts(6 * one, 2 * one)).unwrap();
    for i in 0..6 {
        w.append(&rec(i, 4)).unwrap();
    }
    assert_eq!(w.stats().dropped_points(), 0);
    // The reader consumed and acked record 0 (half of segment 1).
    let (_, p) = r.read_batch(4, usize::MAX).unwrap().unwrap();
    r.ack(p).unwrap();
    w.append(&rec(6, 4)).unwrap();
    // Segment 1 dropped: only record 1 (4 lines) was unacknowledged in it.
    assert_eq!(w.stats().dropped_points(), 4);
    assert!(w.stats().bytes() <= 6 * one);
    assert_eq!(seg_files(d.path()), vec![2, 3, 4]);
    let (body, _) = read_all(&mut r);
    assert_eq!(body, (2..7).map(|i| rec(i, 4)).collect::<Vec<_>>().concat());
    // The ledger moved too: a reopen does not resurrect anything.
    drop((w, r));
    let (_w, mut r) = Spool::open_with(d.path(), opts(6 * one, 2 * one)).unwrap();
    assert_eq!(
        read_all(&mut r).0,
        (2..7).map(|i| rec(i, 4)).collect::<Vec<_>>().concat()
    );
}

#[test]
fn an_append_does_not_wait_for_the_readers_ledger_work() {
    // The reader's ack writes the ledger and unlinks segments under the ledger lock; the
    // commit thread's append must go through meanwhile (it only takes the state lock).
    let d = tempfile::tempdir().unwrap();
    let (mut w, mut r) = Spool::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
    w.append(&rec(1, 1)).unwrap();
    let shared = w.shared.clone();
    let held = shared.ledger.lock();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let res = w.append(&rec(2, 1)).and_then(|_| w.sync());
        let _ = tx.send(res.is_ok());
        w
    });
    let appended = rx.recv_timeout(std::time::Duration::from_secs(10));
    drop(held);
    let _w = t.join().unwrap();
    assert_eq!(appended, Ok(true), "append blocked behind the ledger lock");
    // And the ack (which takes that lock) works after it is released.
    let (body, pos) = read_all(&mut r);
    assert_eq!(body, [rec(1, 1), rec(2, 1)].concat());
    r.ack(pos.unwrap()).unwrap();
    assert!(SpoolStats(shared).is_drained());
}

#[test]
fn acks_racing_full_spool_drops_leave_a_consistent_spool() {
    // A writer filling a small spool (dropping its oldest segments) while the reader reads
    // and acks: both write the ledger and unlink segments, under the ledger lock.
    let d = tempfile::tempdir().unwrap();
    let one = 8 + rec(1000, 2).len() as u64;
    let o = || opts(12 * one, 3 * one);
    let (mut w, mut r) = Spool::open_with(d.path(), o()).unwrap();
    let n = 3000;
    let writer = std::thread::spawn(move || {
        for i in 1000..1000 + n {
            w.append(&rec(i, 2)).unwrap();
        }
        w
    });
    let mut ids = Vec::new();
    let mut lines = 0;
    loop {
        let done = writer.is_finished();
        let mut b = Batch::default();
        r.fill(&mut b, 6, usize::MAX).unwrap();
        let Some(end) = b.end else {
            if done {
                break;
            }
            continue;
        };
        lines += b.lines;
        for l in std::str::from_utf8(&b.body).unwrap().lines() {
            if l.contains(" f=0 ") {
                ids.push(l[4..8].parse::<usize>().unwrap());
            }
        }
        r.ack(end).unwrap();
    }
    let w = writer.join().unwrap();
    // Whole records, in append order, none twice; what was not read was counted dropped.
    assert!(ids.windows(2).all(|p| p[0] < p[1]), "order: {ids:?}");
    assert_eq!(lines, 2 * ids.len());
    assert!(lines as u64 + w.stats().dropped_points() >= 2 * n as u64);
    // Everything read was acked: a reopen finds a valid ledger and nothing to replay.
    drop((w, r));
    let (_w, mut r) = Spool::open_with(d.path(), o()).unwrap();
    assert!(read_all(&mut r).0.is_empty());
}

#[test]
fn record_bigger_than_the_bound_is_dropped_not_stored() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, mut r) = Spool::open_with(d.path(), opts(64, 32)).unwrap();
    w.append(&rec(1, 10)).unwrap();
    assert_eq!(w.stats().dropped_points(), 10);
    assert!(r.read_batch(100, usize::MAX).unwrap().is_none());
    w.append(b"m f=1 1\n").unwrap();
    assert_eq!(
        r.read_batch(100, usize::MAX).unwrap().unwrap().0,
        b"m f=1 1\n"
    );
}

#[test]
fn ledger_pointing_past_a_lost_tail_is_clamped() {
    // Power cut: the ledger (renamed) survived, the unsynced tail did not.
    let d = tempfile::tempdir().unwrap();
    {
        let (mut w, mut r) = Spool::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
        w.append(&rec(1, 1)).unwrap();
        w.append(&rec(2, 1)).unwrap();
        let (_, p) = r.read_batch(100, usize::MAX).unwrap().unwrap();
        r.ack(p).unwrap();
    }
    let path = segment_path(d.path(), 1);
    let keep = 8 + rec(1, 1).len() as u64;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(keep)
        .unwrap();
    let (mut w, mut r) = Spool::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
    w.append(&rec(3, 1)).unwrap();
    assert_eq!(read_all(&mut r).0, rec(3, 1));
}

#[test]
fn corrupt_ledger_replays_from_the_oldest_segment() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut w, mut r) = Spool::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
        w.append(&rec(1, 1)).unwrap();
        w.append(&rec(2, 1)).unwrap();
        let (_, p) = r.read_batch(1, usize::MAX).unwrap().unwrap();
        r.ack(p).unwrap();
    }
    fs::write(d.path().join(LEDGER), b"garbage").unwrap();
    let (_w, mut r) = Spool::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
    // At-least-once: a replay of acked data is acceptable, loss is not.
    assert_eq!(read_all(&mut r).0, [rec(1, 1), rec(2, 1)].concat());
}

#[tokio::test]
async fn wait_wakes_on_append_even_if_it_came_first() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, r) = Spool::open(d.path(), DEFAULT_MAX_BYTES).unwrap();
    w.append(b"m f=1 1\n").unwrap();
    tokio::time::timeout(Duration::from_secs(5), r.wait())
        .await
        .unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        w.append(b"m f=1 2\n").unwrap();
        w
    });
    tokio::time::timeout(Duration::from_secs(5), r.wait())
        .await
        .unwrap();
    t.join().unwrap();
}

use std::time::Duration;

#[derive(Clone, Debug)]
enum Op {
    Append(usize),
    Read(usize),
    Ack,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..6).prop_map(Op::Append),
        3 => (1usize..12).prop_map(Op::Read),
        2 => Just(Op::Ack),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Against a model: reads return exactly the appended, unacknowledged records, in
    /// order, across rotations, acks and reopens; acked segments disappear.
    #[test]
    fn spool_matches_model(ops in proptest::collection::vec(op(), 1..80), seg in 40u64..400) {
        let d = tempfile::tempdir().unwrap();
        let o = opts(1 << 30, seg);
        let (mut w, mut r) = Spool::open_with(d.path(), o).unwrap();
        // Model: all records ever appended; `acked` and `read` are indices into it.
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut acked = 0usize;
        let mut read = 0usize;
        let mut last: Option<(usize, Position)> = None;
        for op in ops {
            match op {
                Op::Append(lines) => {
                    let rr = rec(records.len(), lines);
                    w.append(&rr).unwrap();
                    records.push(rr);
                }
                Op::Read(max_lines) => {
                    let got = r.read_batch(max_lines, usize::MAX).unwrap();
                    let mut want = Vec::new();
                    let mut n = 0;
                    let mut i = read;
                    while i < records.len() {
                        let l = records[i].iter().filter(|&&b| b == b'\n').count();
                        if i > read && n + l > max_lines {
                            break;
                        }
                        n += l;
                        want.extend_from_slice(&records[i]);
                        i += 1;
                    }
                    match got {
                        None => prop_assert_eq!(read, records.len()),
                        Some((body, pos)) => {
                            prop_assert_eq!(body, want);
                            read = i;
                            last = Some((i, pos));
                        }
                    }
                }
                Op::Ack => {
                    if let Some((i, pos)) = last.take() {
                        r.ack(pos).unwrap();
                        acked = acked.max(i);
                        let ack = r.stats().0.state.lock().ack;
                        for id in seg_files(d.path()) {
                            prop_assert!(id >= ack.segment, "segment {} kept after ack {:?}", id, ack);
                        }
                    }
                }
                Op::Reopen => {
                    drop((w, r));
                    (w, r) = Spool::open_with(d.path(), o).unwrap();
                    read = acked;
                    last = None;
                }
            }
        }
        // Finally everything unacknowledged is still there.
        drop((w, r));
        let (_w, mut r) = Spool::open_with(d.path(), o).unwrap();
        let (body, _) = read_all(&mut r);
        prop_assert_eq!(body, records[acked..].concat());
        prop_assert_eq!(r.stats().torn_tails(), 0);
    }
}
