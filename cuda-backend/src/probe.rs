//! Is there a GPU to run on? cudarc loads CUDA at run time and panics at the first call when a
//! library is missing, so everything that may touch CUDA asks here first; tests skip with a
//! clear message, and REQUIRE_GPU=1 turns that skip into a failure.

// cudarc's library checks are `unsafe fn`s (they load a shared library); the unsafe blocks here
// only ask whether a library loads.
#![allow(unsafe_code)]

/// What this machine offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuAvailability {
    /// CUDA's driver and NVRTC load and at least one device is visible.
    Present { device_count: usize },
    /// Why not.
    Absent { reason: String },
}

/// Checks the CUDA driver library, NVRTC and the device count, in that order, without panicking.
pub fn cuda() -> GpuAvailability {
    // SAFETY: only tries to load the driver library by name; no symbol is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return GpuAvailability::Absent {
            reason: "the CUDA driver library (libcuda.so) is not installed".into(),
        };
    }
    // SAFETY: as above, for NVRTC.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return GpuAvailability::Absent {
            reason: "NVRTC (libnvrtc.so) is not installed".into(),
        };
    }
    match cudarc::driver::CudaContext::device_count() {
        Ok(n) if n > 0 => GpuAvailability::Present {
            device_count: n as usize,
        },
        Ok(_) => GpuAvailability::Absent {
            reason: "the CUDA driver sees no device".into(),
        },
        Err(e) => GpuAvailability::Absent {
            reason: format!("the CUDA driver failed to count devices: {e}"),
        },
    }
}

/// Whether NCCL loads (cudarc looks for `libnccl.so`, never `libnccl.so.2`; see gpu.md).
pub fn nccl_present() -> bool {
    // SAFETY: only tries to load the NCCL library by name.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

/// What a GPU test does on a machine without a GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipDecision {
    Run {
        device_count: usize,
    },
    /// Skip, printing this line.
    Skip(String),
    /// REQUIRE_GPU asked for a GPU: fail with this message.
    Fail(String),
}

/// Pure decision from the availability and the REQUIRE_GPU value.
pub fn decide(
    test: &str,
    availability: &GpuAvailability,
    require_gpu: Option<&str>,
) -> SkipDecision {
    match availability {
        GpuAvailability::Present { device_count } => SkipDecision::Run {
            device_count: *device_count,
        },
        GpuAvailability::Absent { reason } => {
            let required =
                matches!(require_gpu.map(str::trim), Some(v) if !v.is_empty() && v != "0");
            if required {
                SkipDecision::Fail(format!(
                    "{test}: REQUIRE_GPU is set but no GPU is usable: {reason}"
                ))
            } else {
                SkipDecision::Skip(format!(
                    "SKIPPED {test}: no GPU ({reason}); set REQUIRE_GPU=1 to make this a failure"
                ))
            }
        }
    }
}

/// For a GPU test: `Some(device_count)` when it should run; `None` after printing that it
/// skipped; panics (a test failure) when REQUIRE_GPU=1 and there is no GPU.
pub fn gpu_or_skip(test: &str) -> Option<usize> {
    let require = std::env::var("REQUIRE_GPU").ok();
    match decide(test, &cuda(), require.as_deref()) {
        SkipDecision::Run { device_count } => Some(device_count),
        SkipDecision::Skip(line) => {
            // Written to the process's stderr directly: the test harness captures `eprintln!`
            // of passing tests, and a skip must be seen in a plain `cargo test`.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{line}");
            None
        }
        SkipDecision::Fail(message) => panic!("{message}"),
    }
}
