//! Stopping on SIGINT or SIGTERM without leaving anything behind: a thread waits for either
//! signal (through signal-hook, so that no work happens inside a signal handler), then removes
//! the temporary files of every output being written, ends the child processes this program
//! started (`check`'s two runs), and exits with 128 + the signal's number, as a shell expects.

use std::sync::Mutex;

/// Child processes to end with this one.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn children() -> std::sync::MutexGuard<'static, Vec<u32>> {
    CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the thread that waits for SIGINT and SIGTERM. Without it the default action ends
/// the process at once and temporary files stay.
pub(crate) fn install() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            faultline_sim::atomic::remove_temporary_files();
            for &pid in children().iter() {
                // SAFETY: kill(2) on a process id this program spawned; no memory is touched.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
            std::process::exit(128 + signal);
        }
    });
    Ok(())
}

/// Ends `pid` with this process if a signal stops it first.
pub(crate) fn adopt(pid: u32) {
    children().push(pid);
}

/// `pid` has exited: nothing to end any more.
pub(crate) fn release(pid: u32) {
    children().retain(|&p| p != pid);
}
