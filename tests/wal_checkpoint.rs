//! WAL checkpoints: no automatic checkpoint inside a commit, `store::checkpoint` reports
//! (pages in the log, pages checkpointed), and the checkpointer thread does the work and
//! ends when its stop sender is dropped or signalled.
//!
//! The checkpointer's progress is read from the WAL index (the `-shm` file), not by
//! running `PRAGMA wal_checkpoint` from the test: that would checkpoint the log itself
//! and prove nothing about the thread.

mod harness;

use std::path::Path;
use std::time::Duration;

use evlounge::store;
use harness::wait_for;
use rusqlite::Connection;

/// (mxFrame: frames in the log, nBackfill: frames copied into the database) from the WAL
/// index, laid out as in <https://sqlite.org/walformat.html> (native byte order): two
/// copies of the 48-byte header (`mxFrame` at offset 16), then the checkpoint info
/// (`nBackfill` at offset 96). `None` when it cannot be read consistently (the copies
/// differ while a writer updates them).
fn wal_index(dir: &Path) -> Option<(u32, u32)> {
    let shm = std::fs::read(store::db_path(dir).with_extension("db-shm")).ok()?;
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_ne_bytes(shm.get(o..o + 4)?.try_into().ok()?)) };
    // iVersion of the WAL-index format, then the two header copies must agree.
    if u32_at(0)? != 3_007_000 || shm.get(0..48)? != shm.get(48..96)? {
        return None;
    }
    Some((u32_at(16)?, u32_at(96)?))
}

fn wal_index_now(dir: &Path) -> (u32, u32) {
    wait_for("a consistent WAL index", Duration::from_secs(5), || {
        wal_index(dir)
    })
}

/// `txns` transactions, each rewriting `rows` charger states of about 2 KB (test setup).
fn write(conn: &mut Connection, txns: usize, rows: usize, round: usize) {
    let pad = "x".repeat(2000);
    for t in 0..txns {
        let tx = conn.transaction().expect("begin");
        for r in 0..rows {
            let json = format!(r#"{{"round":{round},"txn":{t},"pad":"{pad}"}}"#);
            store::save_charger_state(&tx, "s", &format!("c{r}"), &json).expect("save");
        }
        tx.commit().expect("commit");
    }
}

#[test]
fn the_log_grows_until_checkpointed_and_checkpoint_reports_its_progress() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = store::open(dir.path()).unwrap();
    let auto: i64 = conn
        .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
        .unwrap();
    assert_eq!(auto, 0, "no automatic checkpoint inside a commit");
    let writer = store::open_writer(dir.path()).unwrap();
    let auto: i64 = writer
        .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))
        .unwrap();
    assert_eq!(auto, 0, "nor on the second writer");
    drop(writer);

    // 40 transactions of ~60 pages: past SQLite's default automatic checkpoint (1000
    // pages), which would have copied the log and restarted it from the start.
    write(&mut conn, 40, 100, 0);
    let (frames, backfilled) = wal_index_now(dir.path());
    assert!(
        frames > 1500,
        "the log holds every transaction: {frames} frames"
    );
    assert_eq!(backfilled, 0, "nothing checkpointed by the commits");

    // A reader holding a snapshot: a PASSIVE checkpoint copies up to it and no further.
    let reader = store::open_reader(dir.path()).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let n: i64 = reader
        .query_row("SELECT count(*) FROM charger_state", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 100);
    write(&mut conn, 5, 100, 1);
    let r = store::checkpoint(&conn);
    let Ok((log, done)) = r else {
        panic!("checkpoint failed: {r:?}");
    };
    assert!(log > i64::from(frames), "({log}, {done})");
    assert!(
        done >= i64::from(frames) && done < log,
        "checkpointed up to the reader's snapshot ({frames} frames), not past it: ({log}, {done})"
    );
    // The reader is done: everything is checkpointed.
    reader.execute_batch("COMMIT").unwrap();
    let r = store::checkpoint(&conn);
    assert!(
        matches!(r, Ok((l, d)) if l == log && d == log),
        "with no readers the whole log ({log} pages) is checkpointed: {r:?}"
    );
    assert_eq!(wal_index_now(dir.path()), (log as u32, log as u32));

    // The next write starts the log over.
    write(&mut conn, 1, 1, 2);
    let (frames, backfilled) = wal_index_now(dir.path());
    assert!(
        frames < 10 && backfilled == 0,
        "a fully checkpointed log restarts: ({frames}, {backfilled})"
    );
    let r = store::checkpoint(&conn);
    assert!(
        matches!(r, Ok((l, d)) if l == i64::from(frames) && d == l),
        "({frames} frames) {r:?}"
    );
}

#[test]
fn the_checkpointer_checkpoints_and_stops_when_its_sender_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = store::open(dir.path()).unwrap();
    write(&mut conn, 10, 100, 0);
    let (frames, backfilled) = wal_index_now(dir.path());
    assert!(frames > 300 && backfilled == 0, "({frames}, {backfilled})");

    let (stop, rx) = std::sync::mpsc::channel::<()>();
    let thread = store::spawn_checkpointer(dir.path(), rx).unwrap();
    // Within a few of its 1 s rounds, with nothing else checkpointing.
    wait_for(
        "the checkpointer to copy the whole log",
        Duration::from_secs(10),
        || wal_index(dir.path()).filter(|&(f, b)| f == frames && b == frames),
    );
    // With the log copied, the next commit starts it over (it would grow on otherwise).
    write(&mut conn, 1, 1, 1);
    let (restarted, _) = wal_index_now(dir.path());
    assert!(restarted < 10, "the log restarts: {restarted} frames");
    // It keeps going: more writes, checkpointed in turn.
    write(&mut conn, 10, 100, 2);
    let (frames, _) = wal_index_now(dir.path());
    assert!(frames > 300, "{frames}");
    wait_for(
        "the checkpointer's next rounds",
        Duration::from_secs(10),
        || wal_index(dir.path()).filter(|&(f, b)| f == frames && b == frames),
    );
    assert!(!thread.is_finished());

    // Dropping the sender ends it, after a last checkpoint of what was written just
    // before (its next round would be up to a second away).
    write(&mut conn, 3, 100, 3);
    let (frames, backfilled) = wal_index_now(dir.path());
    assert!(backfilled < frames, "({frames}, {backfilled})");
    drop(stop);
    wait_for("the checkpointer to end", Duration::from_secs(5), || {
        thread.is_finished().then_some(())
    });
    assert!(thread.join().is_ok(), "the checkpointer panicked");
    assert_eq!(
        wal_index_now(dir.path()),
        (frames, frames),
        "the last checkpoint copied the log"
    );
}

#[test]
fn the_checkpointer_stops_when_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = store::open(dir.path()).unwrap();
    let (stop, rx) = std::sync::mpsc::channel::<()>();
    let thread = store::spawn_checkpointer(dir.path(), rx).unwrap();
    write(&mut conn, 3, 100, 0);
    let (frames, _) = wal_index_now(dir.path());
    assert!(stop.send(()).is_ok(), "the checkpointer is listening");
    wait_for("the checkpointer to end", Duration::from_secs(5), || {
        thread.is_finished().then_some(())
    });
    assert!(thread.join().is_ok(), "the checkpointer panicked");
    // Ended although its sender is still alive, after a last checkpoint.
    assert_eq!(wal_index_now(dir.path()), (frames, frames));
    drop(stop);
}
