//! The thread pool behind [`ExecutorMode::Thread`](super::ExecutorMode::Thread):
//! OS threads for blocking work, fed from one queue.

use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// A unit of work; it is given the name of the worker that runs it.
pub(crate) type Job = Box<dyn FnOnce(&str) + Send>;

pub(crate) struct ThreadPool {
    // Dropped to tell the workers to finish what is queued and exit.
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl ThreadPool {
    pub(crate) fn start(workers: usize, prefix: &str) -> io::Result<Self> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let mut threads = Vec::with_capacity(workers);
        for n in 1..=workers.max(1) {
            let name = format!("{prefix}-{n}");
            let receiver = Arc::clone(&receiver);
            let worker_id = name.clone();
            threads.push(std::thread::Builder::new().name(name).spawn(move || loop {
                // The lock is held only while waiting for the next job.
                let next = receiver
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .recv();
                match next {
                    Ok(job) => job(&worker_id),
                    Err(_) => break,
                }
            })?);
        }
        Ok(ThreadPool {
            sender: Mutex::new(Some(sender)),
            threads: Mutex::new(threads),
        })
    }

    /// Queues `job`; gives it back when the pool is stopping.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
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
