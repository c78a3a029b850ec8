//! Cloud workers: a small fixed pool of threads running jobs (closures doing the slow, signed
//! calls) and handing each typed result to the event loop. A job that panics still reports,
//! through its `on_panic` result, so nothing stays in flight for ever.

use crate::{Error, Kind, Result};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

pub struct Job<R> {
    pub run: Box<dyn FnOnce() -> R + Send>,
    pub on_panic: Box<dyn FnOnce() -> R + Send>,
}

impl<R> Job<R> {
    pub fn new(
        run: impl FnOnce() -> R + Send + 'static,
        on_panic: impl FnOnce() -> R + Send + 'static,
    ) -> Job<R> {
        Job {
            run: Box::new(run),
            on_panic: Box::new(on_panic),
        }
    }
}

pub struct Workers<R> {
    jobs: Option<Sender<Job<R>>>,
}

impl<R: Send + 'static> Workers<R> {
    /// Starts `n` threads (none for 0); `report` hands a result to the loop and says whether
    /// the loop is still there.
    pub fn start(
        n: usize,
        report: impl Fn(R) -> bool + Send + Sync + 'static,
    ) -> Result<Workers<R>> {
        if n == 0 {
            return Ok(Workers { jobs: None });
        }
        let (tx, rx) = mpsc::channel::<Job<R>>();
        let rx = Arc::new(Mutex::new(rx));
        let report = Arc::new(report);
        for i in 0..n {
            let (rx, report) = (rx.clone(), report.clone());
            std::thread::Builder::new()
                .name(format!("cloud-{i}"))
                .spawn(move || work(&rx, &*report))
                .map_err(|e| Error::new(Kind::Internal, format!("spawn cloud worker: {e}")))?;
        }
        Ok(Workers { jobs: Some(tx) })
    }

    /// Queues a job; false when there are no workers (a source that makes no calls planned one).
    pub fn submit(&self, job: Job<R>) -> bool {
        self.jobs.as_ref().is_some_and(|t| t.send(job).is_ok())
    }
}

fn work<R>(rx: &Mutex<Receiver<Job<R>>>, report: &(dyn Fn(R) -> bool + Send + Sync)) {
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
            guard.recv()
        };
        let Ok(job) = job else { return };
        let Job { run, on_panic } = job;
        // A panic is a bug, but it must not leave the job in flight for ever.
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
            .unwrap_or_else(|_| on_panic());
        if !report(done) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn results_and_panics_both_report() {
        let (tx, rx) = mpsc::channel();
        let w = Workers::start(2, move |r: u32| tx.send(r).is_ok()).unwrap();
        assert!(w.submit(Job::new(|| 7, || 0)));
        assert!(w.submit(Job::new(|| panic!("a bug"), || 99)));
        let mut got: Vec<u32> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, [7, 99]);
        let none: Workers<u32> = Workers::start(0, |_| true).unwrap();
        assert!(!none.submit(Job::new(|| 1, || 1)));
    }
}
