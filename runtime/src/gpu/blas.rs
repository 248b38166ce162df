//! cuBLAS, opened at run time: the strided batched SGEMM behind a manifest's
//! [`Step::Gemm`](super::manifest::Step::Gemm) (convolutions as im2col + GEMM, dense layers),
//! and the sums that count spikes on the device.
//!
//! Found as `$SNNC_CUBLAS` (a path), else `libcublas.so`, `libcublas.so.13`, `.12`, `.11` on
//! the loader's path. Only six symbols are used, all stable across cuBLAS 11–13.

use super::GpuError;
use super::manifest::Gemm;
use std::ffi::{c_int, c_void};

type Handle = *mut c_void;
type CreateFn = unsafe extern "C" fn(*mut Handle) -> c_int;
type DestroyFn = unsafe extern "C" fn(Handle) -> c_int;
type SetStreamFn = unsafe extern "C" fn(Handle, *mut c_void) -> c_int;
type SetMathModeFn = unsafe extern "C" fn(Handle, c_int) -> c_int;
type SasumFn = unsafe extern "C" fn(Handle, c_int, u64, c_int, *mut f32) -> c_int;
#[allow(clippy::type_complexity)]
type SgemmStridedBatchedFn = unsafe extern "C" fn(
    Handle,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const f32,
    u64,
    c_int,
    i64,
    u64,
    c_int,
    i64,
    *const f32,
    u64,
    c_int,
    i64,
    c_int,
) -> c_int;

/// `cublasOperation_t`.
const OP_N: c_int = 0;
const OP_T: c_int = 1;
/// `cublasMath_t`: full f32, or f32 operands rounded to TF32 on the tensor cores.
const DEFAULT_MATH: c_int = 0;
const TF32_TENSOR_OP_MATH: c_int = 3;

/// An open cuBLAS with one handle bound to a stream.
pub(super) struct Blas {
    handle: Handle,
    set_stream: SetStreamFn,
    sgemm: SgemmStridedBatchedFn,
    set_math_mode: SetMathModeFn,
    sasum: SasumFn,
    /// Whether the handle is in TF32 mode now.
    tf32: std::cell::Cell<bool>,
    destroy: DestroyFn,
    /// Keeps the functions above loaded; dropped after the handle is destroyed.
    _lib: libloading::Library,
}

/// Where cuBLAS is looked for, in order.
fn candidates() -> Vec<String> {
    let mut names: Vec<String> = std::env::var("SNNC_CUBLAS").into_iter().collect();
    names.extend(
        [
            "libcublas.so",
            "libcublas.so.13",
            "libcublas.so.12",
            "libcublas.so.11",
        ]
        .map(String::from),
    );
    names
}

fn blas_error(call: &'static str, status: c_int) -> GpuError {
    GpuError::Driver {
        call,
        message: format!("cuBLAS status {status}"),
    }
}

impl Blas {
    /// Opens cuBLAS and creates a handle whose work goes to `stream` (a `CUstream`; null is
    /// the default stream).
    pub(super) fn open(stream: *mut c_void) -> Result<Self, GpuError> {
        let tried = candidates();
        // SAFETY: loading cuBLAS runs its initialisers, which have no preconditions.
        let lib = tried
            .iter()
            .find_map(|name| unsafe { libloading::Library::new(name) }.ok())
            .ok_or_else(|| GpuError::NoBlas(tried.join(", ")))?;
        // SAFETY: the symbols have the C signatures of cuBLAS's v2 API declared above.
        let (create, set_stream, sgemm, set_math_mode, sasum, destroy) = unsafe {
            let get = |name: &'static [u8]| {
                lib.get::<*const c_void>(name)
                    .map_err(|e| GpuError::Driver {
                        call: "loading cuBLAS",
                        message: e.to_string(),
                    })
            };
            (
                std::mem::transmute::<*const c_void, CreateFn>(*get(b"cublasCreate_v2\0")?),
                std::mem::transmute::<*const c_void, SetStreamFn>(*get(b"cublasSetStream_v2\0")?),
                std::mem::transmute::<*const c_void, SgemmStridedBatchedFn>(*get(
                    b"cublasSgemmStridedBatched\0",
                )?),
                std::mem::transmute::<*const c_void, SetMathModeFn>(*get(b"cublasSetMathMode\0")?),
                std::mem::transmute::<*const c_void, SasumFn>(*get(b"cublasSasum_v2\0")?),
                std::mem::transmute::<*const c_void, DestroyFn>(*get(b"cublasDestroy_v2\0")?),
            )
        };
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: writes one handle.
        let status = unsafe { create(&mut handle) };
        if status != 0 {
            return Err(blas_error("cublasCreate", status));
        }
        let blas = Blas {
            handle,
            set_stream,
            sgemm,
            set_math_mode,
            sasum,
            tf32: std::cell::Cell::new(false),
            destroy,
            _lib: lib,
        };
        blas.bind(stream)?;
        Ok(blas)
    }

    /// Sends later work to `stream` (a `CUstream` of the handle's context; null is the
    /// default stream).
    pub(super) fn bind(&self, stream: *mut c_void) -> Result<(), GpuError> {
        // SAFETY: a live handle and a stream of the current context.
        let status = unsafe { (self.set_stream)(self.handle, stream) };
        if status != 0 {
            return Err(blas_error("cublasSetStream", status));
        }
        Ok(())
    }

    /// Full f32 products (the default), or TF32 tensor-core products (`tf32`): operands
    /// rounded to a 10-bit mantissa, sums in f32, as PyTorch's convolutions by default.
    pub(super) fn use_tf32(&self, tf32: bool) -> Result<(), GpuError> {
        if self.tf32.get() == tf32 {
            return Ok(());
        }
        let mode = if tf32 {
            TF32_TENSOR_OP_MATH
        } else {
            DEFAULT_MATH
        };
        // SAFETY: a live handle; the mode is a valid `cublasMath_t`.
        let status = unsafe { (self.set_math_mode)(self.handle, mode) };
        if status != 0 {
            return Err(blas_error("cublasSetMathMode", status));
        }
        self.tf32.set(tf32);
        Ok(())
    }

    /// Σ|x| over `len` f32 at device address `x`, after the stream's earlier work; blocks
    /// until it is known. Summed by cuBLAS in chunks of 2^24 values added in f64, so a count
    /// of 0/1 values (spikes) is exact: every partial sum is an integer below 2^24.
    ///
    /// # Safety
    /// `x` must be device memory of the handle's context holding `len` f32.
    pub(super) unsafe fn sum_abs(&self, x: u64, len: usize) -> Result<f64, GpuError> {
        const CHUNK: usize = 1 << 24;
        let mut total = 0f64;
        for start in (0..len).step_by(CHUNK) {
            let n = (len - start).min(CHUNK);
            let mut part = 0f32;
            // SAFETY: `start + n <= len` values from `x`; the result is a host scalar
            // (cuBLAS's default pointer mode), written before the call returns.
            let status = unsafe {
                (self.sasum)(
                    self.handle,
                    n as c_int,
                    x + (start * 4) as u64,
                    1,
                    &mut part,
                )
            };
            if status != 0 {
                return Err(blas_error("cublasSasum", status));
            }
            total += f64::from(part);
        }
        Ok(total)
    }

    /// Enqueues `g` on the handle's stream over device pointers `a`, `b`, `c`.
    ///
    /// Row-major `C = op(A)·op(B)` is column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`, and a row-major
    /// matrix is its transpose in column-major: so cuBLAS gets `B` first, the sizes `n, m`,
    /// and each operand's own transposition.
    ///
    /// # Safety
    /// Each pointer is device memory of the handle's context holding at least
    /// [`Gemm::extents`] f32 elements.
    pub(super) unsafe fn sgemm(&self, g: &Gemm, a: u64, b: u64, c: u64) -> Result<(), GpuError> {
        let int = |v: usize| {
            c_int::try_from(v).map_err(|_| GpuError::Usage(format!("GEMM size {v} exceeds i32")))
        };
        let long = |v: usize| {
            i64::try_from(v).map_err(|_| GpuError::Usage(format!("GEMM stride {v} exceeds i64")))
        };
        let (alpha, beta) = (1f32, if g.accumulate { 1f32 } else { 0f32 });
        let (op_b, ldb) = if g.trans_b { (OP_T, g.k) } else { (OP_N, g.n) };
        let (op_a, lda) = if g.trans_a { (OP_T, g.m) } else { (OP_N, g.k) };
        // SAFETY: sizes and strides describe memory the caller vouches for; alpha and beta
        // are host scalars (cuBLAS's default pointer mode).
        let status = unsafe {
            (self.sgemm)(
                self.handle,
                op_b,
                op_a,
                int(g.n)?,
                int(g.m)?,
                int(g.k)?,
                &alpha,
                b,
                int(ldb)?,
                long(g.stride_b)?,
                a,
                int(lda)?,
                long(g.stride_a)?,
                &beta,
                c,
                int(g.n)?,
                long(g.stride_c)?,
                int(g.batch)?,
            )
        };
        if status != 0 {
            return Err(blas_error("cublasSgemmStridedBatched", status));
        }
        Ok(())
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created in `open`, destroyed once; a failure leaks nothing the process keeps.
        let _ = unsafe { (self.destroy)(self.handle) };
    }
}
