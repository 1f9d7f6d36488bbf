//! `Summary::report_every` logs the task summary once per period, through
//! `tracing`, until its handle is dropped.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventforge_rpc::HandlerError;
use eventforge_tasks::observers::Summary;
use eventforge_tasks::Task;

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn summaries(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .filter(|line| line.contains("task summary"))
            .map(str::to_owned)
            .collect()
    }
}

// The clock is paused: time only moves when every task waits, so the
// periods below elapse in order, deterministically.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_summary_is_logged_once_per_period_until_dropped() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let summary = Summary::new("adder");
    let task = Task::builder("add", |a: i64, b: i64| Ok::<_, HandlerError>(a + b))
        .observer(summary.clone())
        .build();
    task.call((1, 2)).await.unwrap();
    task.call((1, "two")).await.unwrap_err();

    let reporting = summary.report_every(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(25)).await;
    let lines = captured.summaries();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for line in &lines {
        assert!(line.contains("summary=adder"), "{line}");
        assert!(line.contains("count=2"), "{line}");
        assert!(line.contains("successes=1"), "{line}");
        assert!(line.contains("failures=1"), "{line}");
    }

    drop(reporting);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        captured.summaries().len(),
        2,
        "no report after the handle is dropped"
    );
}
