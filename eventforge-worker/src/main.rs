//! The `eventforge` command: `worker`, `call`, `pub`, `sub`.

use std::process::ExitCode;

use clap::Parser;
use eventforge_worker::cli::{Cli, Command};
use eventforge_worker::error::EXIT_OTHER;
use eventforge_worker::{commands, Worker, WorkerError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("eventforge: error: cannot start the runtime: {error}");
            return ExitCode::from(EXIT_OTHER);
        }
    };
    let result: Result<(), WorkerError> = runtime.block_on(async move {
        match cli.command {
            Command::Worker(args) => Worker::new(args).run().await,
            Command::Call(args) => commands::call(args).await,
            Command::Pub(args) => commands::publish(args).await,
            Command::Sub(args) => commands::subscribe(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("eventforge: error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
