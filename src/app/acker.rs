//! The ack thread: owns the time-series spool's writer, appends each committed batch's
//! lines, syncs them (one fdatasync for all the batches that arrived meanwhile: a group
//! commit), and then acks the batches' QoS 1 messages, in order. The commit thread hands a
//! batch over after its store commit and goes on with the next one; the batch's events are
//! out before its lines reach the disk. Backpressure: the hand-over queue is bounded (and
//! the thread holds at most as many batches again), so a disk that stalls or fails stops
//! intake instead of growing memory.
//!
//! Appends and syncs on one thread never overlap: on ext4 an append that extends the file
//! waits for a concurrent fdatasync's write of the inode, which put up to 30 ms on the
//! commit thread when it appended itself.
//!
//! Lines handed over but not yet synced are lost to a crash or a power cut although the
//! store has the batch; the batch was not acked, so the broker redelivers it (DUP) and the
//! commit thread writes its lines again (`Processor::telemetry`). Lines a redelivery cannot
//! write again go through [`Acker::write_durably`] before the commit. (Messages delivered
//! at QoS 0 are not redelivered: their lines of the last few ms can be lost to a crash.)

use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use rumqttc::Publish;

use crate::app::processor::PointSink;
use crate::util::backoff::Backoff;

/// What to ack for one QoS 1 message: the packet, and the connection epoch it arrived on.
pub type Ack = (Publish, u64);
/// Sends one ack (see `MqttHandle::ack`).
pub type AckFn = std::sync::Arc<dyn Fn(&Ack) + Send + Sync>;

/// Batches that may wait for their acks; beyond it the commit thread waits.
const QUEUE: usize = 64;
/// At shutdown, a spool that keeps failing is given up after this many attempts: those
/// batches stay unacked and the next run gets them again.
const SHUTDOWN_ATTEMPTS: u32 = 5;

/// One batch: its lines, then its acks.
struct Job {
    /// Kept until a sync covered them: after a failed fdatasync they are appended again
    /// (Linux may have dropped the dirty pages it could not write, and report the next
    /// sync as successful without them).
    lines: Vec<u8>,
    appended: bool,
    acks: Vec<Ack>,
    /// Told whether the lines are durable (a batch that waits for it before its commit);
    /// such a job is not retried here: the commit thread retries its batch.
    reply: Option<flume::Sender<io::Result<()>>>,
}

pub struct Acker {
    tx: Option<flume::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Acker {
    pub fn start(sink: Option<Box<dyn PointSink>>, ack: AckFn) -> io::Result<Acker> {
        let (tx, rx) = flume::bounded(QUEUE);
        let thread = std::thread::Builder::new()
            .name("acker".into())
            .spawn(move || run(rx, sink, ack))?;
        Ok(Acker {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands a committed batch over: its lines are appended and synced, then its messages
    /// acked. Waits while the queue is full. Gives the lines and acks back when the thread
    /// is gone.
    pub fn send(&self, lines: Vec<u8>, acks: Vec<Ack>) -> Result<(), (Vec<u8>, Vec<Ack>)> {
        let job = Job {
            lines,
            appended: false,
            acks,
            reply: None,
        };
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| {
                let job = e.into_inner();
                (job.lines, job.acks)
            }),
            None => Err((job.lines, job.acks)),
        }
    }

    /// Appends `lines` after everything handed over before and returns once they are
    /// synced (with them, everything before).
    pub fn write_durably(&self, lines: Vec<u8>) -> io::Result<()> {
        let gone = || io::Error::other("the ack thread is gone");
        let tx = self.tx.as_ref().ok_or_else(gone)?;
        let (reply, answer) = flume::bounded(1);
        tx.send(Job {
            lines,
            appended: false,
            acks: Vec::new(),
            reply: Some(reply),
        })
        .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }

    /// The thread has ended (it only does so when its queue is closed, or by a panic).
    pub fn is_gone(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Lets the thread write, sync and ack what it holds, and waits for it.
    pub fn finish(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the ack thread panicked");
            }
        }
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        self.finish();
    }
}

fn run(rx: flume::Receiver<Job>, mut sink: Option<Box<dyn PointSink>>, ack: AckFn) {
    let mut jobs: Vec<Job> = Vec::new();
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(2));
    let failures = metrics::counter!("evlounge_spool_sync_failures_total");
    let mut attempts = 0u32;
    // Appended and not synced since (also across a failed round).
    let mut unsynced = false;
    loop {
        if jobs.is_empty() {
            match rx.recv() {
                Ok(job) => jobs.push(job),
                Err(_) => return,
            }
        }
        // At most a queue's worth held here too: while the spool fails, the commit thread
        // fills the queue and waits.
        let room = QUEUE.saturating_sub(jobs.len());
        jobs.extend(rx.try_iter().take(room));
        match write(sink.as_deref_mut(), &mut jobs, &mut unsynced) {
            Ok(()) => {
                if attempts > 0 {
                    tracing::info!(attempts, "tsdb spool writable again");
                    attempts = 0;
                    backoff.reset();
                }
                for job in jobs.drain(..) {
                    if let Some(reply) = job.reply {
                        let _ = reply.send(Ok(()));
                    }
                    for a in &job.acks {
                        ack(a);
                    }
                }
            }
            Err(e) => {
                attempts += 1;
                failures.increment(1);
                if attempts == 1 || attempts.is_multiple_of(20) {
                    let messages: usize = jobs.iter().map(|j| j.acks.len()).sum();
                    tracing::error!(error = %e, attempts, messages, "tsdb spool write failed; retrying (the messages stay unacked)");
                }
                for job in jobs.iter_mut() {
                    // A batch waiting before its commit is retried by the commit thread.
                    if let Some(reply) = job.reply.take() {
                        let _ = reply.send(Err(io::Error::new(e.kind(), e.to_string())));
                        job.lines = Vec::new();
                    }
                    // The rest is appended again: the failed write or sync may have lost it.
                    job.appended = false;
                }
                if rx.is_disconnected() && attempts >= SHUTDOWN_ATTEMPTS {
                    tracing::error!(
                        batches = jobs.len(),
                        "giving up on the tsdb spool at shutdown; the broker redelivers those messages"
                    );
                    return;
                }
                std::thread::sleep(backoff.next_delay());
            }
        }
    }
}

/// Appends the jobs' lines not appended yet, then syncs when anything is appended and not
/// synced (in this round or a failed one before).
fn write(
    sink: Option<&mut (dyn PointSink + 'static)>,
    jobs: &mut [Job],
    unsynced: &mut bool,
) -> io::Result<()> {
    let Some(sink) = sink else {
        return Ok(());
    };
    for job in jobs
        .iter_mut()
        .filter(|j| !j.appended && !j.lines.is_empty())
    {
        sink.append(&job.lines)?;
        job.appended = true;
        *unsynced = true;
    }
    if *unsynced {
        sink.sync()?;
        *unsynced = false;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use parking_lot::Mutex;
    use rumqttc::QoS;

    fn ack_of(pkid: u16) -> Ack {
        let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new());
        p.pkid = pkid;
        (p, 1)
    }

    /// Records appends, syncs and acks into one log, in the order they happened.
    #[derive(Clone, Default)]
    struct Log {
        log: Arc<Mutex<Vec<String>>>,
        failing_syncs: Arc<AtomicUsize>,
    }

    impl PointSink for Log {
        fn append(&mut self, lines: &[u8]) -> io::Result<()> {
            let s = String::from_utf8_lossy(lines).trim().to_string();
            self.log.lock().push(format!("append {s}"));
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            let failing =
                self.failing_syncs
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if failing.is_ok() {
                self.log.lock().push("sync failed".into());
                return Err(io::Error::other("injected"));
            }
            self.log.lock().push("sync".into());
            Ok(())
        }
    }

    impl Log {
        fn acker(&self) -> Acker {
            let log = self.log.clone();
            let ack: AckFn = Arc::new(move |a: &Ack| log.lock().push(format!("ack {}", a.0.pkid)));
            Acker::start(Some(Box::new(self.clone())), ack).expect("start")
        }
        fn entries(&self) -> Vec<String> {
            self.log.lock().clone()
        }
    }

    fn send(a: &Acker, lines: &str, pkids: &[u16]) {
        let acks = pkids.iter().map(|&i| ack_of(i)).collect();
        a.send(lines.as_bytes().to_vec(), acks)
            .map_err(|_| ())
            .expect("send");
    }

    #[test]
    fn a_batch_is_acked_after_its_lines_are_appended_and_synced_in_order() {
        let log = Log::default();
        let mut a = log.acker();
        send(&a, "l1\n", &[1, 2]);
        send(&a, "", &[3]);
        send(&a, "l4\n", &[4]);
        a.finish();
        let e = log.entries();
        let pos = |s: &str| e.iter().position(|x| x == s).expect(s);
        let acks: Vec<&String> = e.iter().filter(|x| x.starts_with("ack")).collect();
        assert_eq!(acks, ["ack 1", "ack 2", "ack 3", "ack 4"]);
        assert!(pos("append l1") < pos("append l4"), "{e:?}");
        // Each ack after a sync that followed its batch's append.
        let sync_after = |append: &str| {
            let from = pos(append);
            from + e[from..].iter().position(|x| x == "sync").expect("a sync")
        };
        assert!(sync_after("append l1") < pos("ack 1"), "{e:?}");
        assert!(sync_after("append l4") < pos("ack 4"), "{e:?}");
    }

    #[test]
    fn a_batch_without_lines_is_acked_without_a_sync() {
        let log = Log::default();
        let mut a = log.acker();
        send(&a, "", &[7]);
        a.finish();
        assert_eq!(log.entries(), ["ack 7"]);
    }

    #[test]
    fn write_durably_returns_after_the_sync_of_everything_before() {
        let log = Log::default();
        let mut a = log.acker();
        send(&a, "l1\n", &[1]);
        a.write_durably(b"l2\n".to_vec()).expect("durable");
        let e = log.entries();
        let pos = |s: &str| e.iter().position(|x| x == s).expect(s);
        assert!(pos("append l1") < pos("append l2"), "{e:?}");
        let last_sync = e.iter().rposition(|x| x == "sync").expect("a sync");
        assert!(pos("append l2") < last_sync, "{e:?}");
        a.finish();
    }

    #[test]
    fn a_failing_sync_is_retried_and_nothing_is_acked_before_it_succeeds() {
        let log = Log::default();
        log.failing_syncs.store(3, Ordering::SeqCst);
        let mut a = log.acker();
        send(&a, "l1\n", &[1]);
        send(&a, "l2\n", &[2]);
        a.finish();
        let e = log.entries();
        let acks: Vec<&String> = e.iter().filter(|x| x.starts_with("ack")).collect();
        assert_eq!(acks, ["ack 1", "ack 2"]);
        let first_ack = e.iter().position(|l| l.starts_with("ack")).expect("acks");
        assert_eq!(
            e[..first_ack]
                .iter()
                .filter(|s| s.as_str() == "sync failed")
                .count(),
            3,
            "{e:?}"
        );
        assert_eq!(e[first_ack - 1], "sync", "{e:?}");
        // After the last failed sync, both batches' lines were appended again before the
        // sync that counted.
        let last_failure = e[..first_ack]
            .iter()
            .rposition(|l| l == "sync failed")
            .expect("failures");
        let again = &e[last_failure..first_ack];
        assert!(
            again.contains(&"append l1".to_string()) && again.contains(&"append l2".to_string()),
            "{e:?}"
        );
    }

    #[test]
    fn a_failing_durable_write_is_reported_to_the_caller() {
        let log = Log::default();
        log.failing_syncs.store(1, Ordering::SeqCst);
        let mut a = log.acker();
        assert!(a.write_durably(b"l1\n".to_vec()).is_err());
        a.write_durably(b"l1\n".to_vec()).expect("the retry");
        a.finish();
    }

    #[test]
    fn at_shutdown_a_spool_that_keeps_failing_leaves_its_batches_unacked() {
        let log = Log::default();
        log.failing_syncs.store(usize::MAX, Ordering::SeqCst);
        let mut a = log.acker();
        send(&a, "l1\n", &[1]);
        a.finish();
        let e = log.entries();
        assert!(!e.iter().any(|l| l.starts_with("ack")), "{e:?}");
        assert!(
            e.iter().filter(|l| l.as_str() == "sync failed").count() >= SHUTDOWN_ATTEMPTS as usize
        );
    }
}
