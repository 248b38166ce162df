//! The C allocator's policy for a training process.
//!
//! Every step allocates and frees the same large buffers (activations, gradients, im2col
//! matrices, the host copies of parameters and gradients). glibc serves each block over
//! 128 KiB with a fresh `mmap` and unmaps it on `free`, so every step faults every page in
//! again: measured on the 2-core development VM, 283 MB cost 100–145 ms per step that way and
//! 7–9 ms when the memory is reused. Raising the mmap and trim thresholds keeps freed blocks in
//! the heap for the next step (the peers' benchmark scripts set the same through
//! `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`). Memory is then returned to the
//! system only at exit; the peak is unchanged.

/// Makes glibc keep freed blocks of up to 1 GiB for reuse instead of unmapping them. Does
/// nothing when the user set either threshold through the environment, or off glibc.
pub fn keep_freed_memory() {
    let user_set = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if user_set {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's <malloc.h>.
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        unsafe extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        // SAFETY: mallopt only changes allocator parameters; it is called before the
        // training threads start (and glibc serialises it with allocations anyway).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 1 << 30);
            mallopt(M_TRIM_THRESHOLD, std::ffi::c_int::MAX);
        }
    }
}
