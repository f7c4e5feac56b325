//! Crash points for tests. With `MULTICSI_CRASH_AT=<name>` in its
//! environment the process dies at once, as under kill -9 (no clean-up
//! runs), when it reaches the point of that name; the VM suite uses it to
//! prove that a multi-step change survives being cut off between steps.
//! Unset, a crash point does nothing.

/// The environment variable that names the point to die at.
pub const CRASH_AT: &str = "MULTICSI_CRASH_AT";

/// Dies here when `MULTICSI_CRASH_AT` names this point.
pub fn crash_point(name: &str) {
    if std::env::var_os(CRASH_AT).is_some_and(|at| at == name) {
        eprintln!("multicsi: crash point {name} reached ({CRASH_AT}); dying");
        std::process::abort();
    }
}
