//! `SIGINT` and `SIGTERM` during `convert` and `merge`: the run's temporary files and folders
//! are removed ([`arraydrain::fsafe::remove_all_before_exit`]) and the process exits with
//! 128 + the signal (130, 143). A background thread waits for the signals; the cleanup runs
//! there, not in a signal handler.

/// Installs the handlers and starts the thread that waits for the signals.
pub fn remove_outputs_on_signals() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("arraydrain-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                arraydrain::fsafe::remove_all_before_exit();
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}
