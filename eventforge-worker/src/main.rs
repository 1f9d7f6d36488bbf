//! The `eventforge` command.

use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version" | "-V") => {
            println!("eventforge {}", eventforge_worker::VERSION);
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "eventforge {}: the worker, call, pub and sub commands are not available yet",
                eventforge_worker::VERSION
            );
            ExitCode::from(2)
        }
    }
}
