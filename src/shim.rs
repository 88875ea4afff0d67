//! Errors from the C++ shims in `src/shim/` (see `status.h` there): an entry point returns a
//! status, and the message of the last failure on this thread is read back here.

use anyhow::{bail, Result};
use std::os::raw::c_char;

extern "C" {
    fn scoreflow_shim_last_error() -> *const c_char;
}

/// `Ok` for status 0, else an error `"{what}: {first line of the C++ message}"`.
pub(crate) fn check(status: i32, what: &str) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    // SAFETY: the shim returns a pointer to its thread-local, NUL-terminated message.
    let msg = unsafe { std::ffi::CStr::from_ptr(scoreflow_shim_last_error()) }
        .to_string_lossy()
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    bail!("{what}: {msg}")
}
