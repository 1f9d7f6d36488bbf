//! The thread pool behind [`ExecutorMode::Thread`](super::ExecutorMode::Thread):
//! OS threads for blocking work, fed from one queue.

use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// A unit of work; it is given the name of the worker that runs it.
pub(crate) type Job = Box<dyn FnOnce(&str) + Send>;

/// OS threads fed from one queue of jobs `J`: the machinery shared by the
/// thread pool and the process pool (whose threads each drive a child).
pub(crate) struct WorkerThreads<J> {
    // Dropped to tell the workers to finish what is queued and exit.
    sender: Mutex<Option<mpsc::Sender<J>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl<J: Send + 'static> WorkerThreads<J> {
    /// Starts `workers` (at least 1) threads; thread `n` (from 1) is named
    /// `name(n)` and runs `work(n, queue)` until it returns.
    pub(crate) fn start<W>(
        workers: usize,
        name: impl Fn(usize) -> String,
        work: W,
    ) -> io::Result<Self>
    where
        W: Fn(usize, &Mutex<mpsc::Receiver<J>>) + Clone + Send + 'static,
    {
        let (sender, receiver) = mpsc::channel::<J>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut threads = Vec::with_capacity(workers);
        for n in 1..=workers.max(1) {
            let receiver = Arc::clone(&receiver);
            let work = work.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(name(n))
                    .spawn(move || work(n, &receiver))?,
            );
        }
        Ok(WorkerThreads {
            sender: Mutex::new(Some(sender)),
            threads: Mutex::new(threads),
        })
    }

    /// Queues `job`; gives it back when the pool is stopping.
    pub(crate) fn submit(&self, job: J) -> Result<(), J> {
        match self
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            Some(sender) => sender.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Closes the queue; with `wait`, joins the workers once it is drained.
    pub(crate) fn stop(&self, wait: bool) {
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        if wait {
            for thread in threads {
                let _ = thread.join();
            }
        }
    }
}

/// The pool of [`ExecutorMode::Thread`](super::ExecutorMode::Thread).
pub(crate) type ThreadPool = WorkerThreads<Job>;

impl ThreadPool {
    /// Starts `workers` threads named `<prefix>-<n>` running jobs.
    pub(crate) fn start_jobs(workers: usize, prefix: &str) -> io::Result<Self> {
        let name = |n| format!("{prefix}-{n}");
        let prefix = prefix.to_owned();
        Self::start(workers, name, move |n, receiver| {
            let worker_id = format!("{prefix}-{n}");
            loop {
                // The lock is held only while waiting for the next job.
                let next = receiver
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .recv();
                match next {
                    Ok(job) => job(&worker_id),
                    Err(_) => break,
                }
            }
        })
    }
}
