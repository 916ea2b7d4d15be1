//! The ack thread: acks each batch's QoS 1 messages, in order, once everything the batch
//! wrote is durable. The store's commit is, before the commit thread hands the batch over;
//! the spool's lines are synced here, one fdatasync for all the batches that arrived
//! meanwhile (a group commit), while the commit thread goes on with the next batch and the
//! events of this one are already out. Backpressure: the hand-over queue is bounded, so a
//! disk that stalls stops intake instead of growing memory.
//!
//! A power cut between a batch's store commit and the spool's sync loses lines the store
//! already applied; the batch was not acked, so the broker redelivers it (DUP) and the
//! commit thread writes those lines again (`Processor::telemetry`).

use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use rumqttc::Publish;

use crate::util::backoff::Backoff;

/// What to ack for one QoS 1 message: the packet, and the connection epoch it arrived on.
pub type Ack = (Publish, u64);
/// Makes what was appended to the spool so far durable (see `SpoolSync`).
pub type SyncFn = Box<dyn FnMut() -> io::Result<()> + Send>;
/// Sends one ack (see `MqttHandle::ack`).
pub type AckFn = std::sync::Arc<dyn Fn(&Ack) + Send + Sync>;

/// Batches that may wait for their acks; beyond it the commit thread waits.
const QUEUE: usize = 64;
/// At shutdown a sync that keeps failing is given up after this many attempts: the batches
/// stay unacked and the next run gets them again.
const SHUTDOWN_ATTEMPTS: u32 = 5;

/// One committed batch.
pub struct AckJob {
    pub acks: Vec<Ack>,
    /// The batch appended spool lines that nobody synced yet.
    pub unsynced: bool,
}

pub struct Acker {
    tx: Option<flume::Sender<AckJob>>,
    thread: Option<JoinHandle<()>>,
    syncs: bool,
}

impl Acker {
    /// Starts the thread. Without `sync`, jobs must not be `unsynced` (nothing syncs them).
    pub fn start(sync: Option<SyncFn>, ack: AckFn) -> io::Result<Acker> {
        let (tx, rx) = flume::bounded(QUEUE);
        let syncs = sync.is_some();
        let thread = std::thread::Builder::new()
            .name("acker".into())
            .spawn(move || run(rx, sync, ack))?;
        Ok(Acker {
            tx: Some(tx),
            thread: Some(thread),
            syncs,
        })
    }

    /// Whether it syncs the spool (so a batch may leave its lines unsynced).
    pub fn syncs(&self) -> bool {
        self.syncs
    }

    /// Hands a committed batch over; waits while the queue is full. Gives the job back
    /// when the thread is gone.
    pub fn send(&self, job: AckJob) -> Result<(), AckJob> {
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|e| e.into_inner()),
            None => Err(job),
        }
    }

    /// Lets the thread sync and ack what it holds, and waits for it.
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

fn run(rx: flume::Receiver<AckJob>, mut sync: Option<SyncFn>, ack: AckFn) {
    let mut jobs: Vec<AckJob> = Vec::new();
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(2));
    let failures = metrics::counter!("evlounge_spool_sync_failures_total");
    while let Ok(job) = rx.recv() {
        jobs.push(job);
        jobs.extend(rx.try_iter());
        if let Some(sync) = sync.as_mut().filter(|_| jobs.iter().any(|j| j.unsynced)) {
            let mut attempts = 0u32;
            loop {
                match sync() {
                    Ok(()) => {
                        if attempts > 0 {
                            tracing::info!(attempts, "tsdb spool sync recovered");
                        }
                        backoff.reset();
                        break;
                    }
                    Err(e) => {
                        attempts += 1;
                        failures.increment(1);
                        if attempts == 1 || attempts % 20 == 0 {
                            tracing::error!(error = %e, attempts, messages = jobs.iter().map(|j| j.acks.len()).sum::<usize>(), "tsdb spool sync failed; retrying (the messages stay unacked)");
                        }
                        if rx.is_disconnected() && attempts >= SHUTDOWN_ATTEMPTS {
                            tracing::error!(
                                batches = jobs.len(),
                                "giving up on the spool sync at shutdown; the broker redelivers those messages"
                            );
                            return;
                        }
                        std::thread::sleep(backoff.next_delay());
                        // Batches that came meanwhile: the next attempt covers them too.
                        jobs.extend(rx.try_iter());
                    }
                }
            }
        }
        for job in jobs.drain(..) {
            for a in &job.acks {
                ack(a);
            }
        }
    }
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

    fn job(pkids: &[u16], unsynced: bool) -> AckJob {
        AckJob {
            acks: pkids.iter().map(|&i| ack_of(i)).collect(),
            unsynced,
        }
    }

    /// Records syncs and acks into one log, in the order they happened.
    fn recorder(
        failing: usize,
    ) -> (SyncFn, AckFn, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let left = Arc::new(AtomicUsize::new(failing));
        let sync = {
            let log = log.clone();
            let left = left.clone();
            Box::new(move || {
                if left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    log.lock().push("sync failed".to_string());
                    return Err(io::Error::other("injected"));
                }
                log.lock().push("sync".to_string());
                Ok(())
            }) as SyncFn
        };
        let ack = {
            let log = log.clone();
            Arc::new(move |a: &Ack| log.lock().push(format!("ack {}", a.0.pkid))) as AckFn
        };
        (sync, ack, log, left)
    }

    #[test]
    fn acks_follow_a_sync_that_started_after_their_batch_and_keep_their_order() {
        let (sync, ack, log, _) = recorder(0);
        let mut acker = Acker::start(Some(sync), ack).expect("start");
        assert!(acker.syncs());
        acker.send(job(&[1, 2], true)).map_err(|_| ()).expect("send");
        acker.send(job(&[3], false)).map_err(|_| ()).expect("send");
        acker.send(job(&[4], true)).map_err(|_| ()).expect("send");
        acker.finish();
        let log = log.lock().clone();
        let acks: Vec<&str> = log
            .iter()
            .filter(|l| l.starts_with("ack"))
            .map(String::as_str)
            .collect();
        assert_eq!(acks, ["ack 1", "ack 2", "ack 3", "ack 4"]);
        // Every ack of an unsynced batch comes after a sync that followed its hand-over.
        let last_sync = log.iter().rposition(|l| l == "sync").expect("a sync");
        let ack4 = log.iter().position(|l| l == "ack 4").expect("ack 4");
        assert!(last_sync < ack4, "{log:?}");
        let first_sync = log.iter().position(|l| l == "sync").expect("a sync");
        let ack1 = log.iter().position(|l| l == "ack 1").expect("ack 1");
        assert!(first_sync < ack1, "{log:?}");
    }

    #[test]
    fn batches_already_synced_are_acked_without_a_sync() {
        let (sync, ack, log, _) = recorder(0);
        let mut acker = Acker::start(Some(sync), ack).expect("start");
        acker.send(job(&[7], false)).map_err(|_| ()).expect("send");
        acker.finish();
        assert_eq!(*log.lock(), ["ack 7"]);
    }

    #[test]
    fn a_failing_sync_is_retried_and_nothing_is_acked_before_it_succeeds() {
        let (sync, ack, log, _) = recorder(3);
        let mut acker = Acker::start(Some(sync), ack).expect("start");
        acker.send(job(&[1], true)).map_err(|_| ()).expect("send");
        acker.send(job(&[2], true)).map_err(|_| ()).expect("send");
        acker.finish();
        let log = log.lock().clone();
        let first_ack = log.iter().position(|l| l.starts_with("ack")).expect("acks");
        assert_eq!(
            log[..first_ack],
            ["sync failed", "sync failed", "sync failed", "sync"],
            "{log:?}"
        );
        assert_eq!(log[first_ack..], ["ack 1", "ack 2"]);
    }

    #[test]
    fn at_shutdown_a_sync_that_keeps_failing_leaves_its_batches_unacked() {
        let (sync, ack, log, _) = recorder(usize::MAX);
        let mut acker = Acker::start(Some(sync), ack).expect("start");
        acker.send(job(&[1], true)).map_err(|_| ()).expect("send");
        acker.finish();
        let log = log.lock().clone();
        assert!(log.iter().all(|l| l == "sync failed"), "{log:?}");
        assert!(log.len() >= SHUTDOWN_ATTEMPTS as usize);
    }
}
