//! The CUDA driver side: device discovery, device buffers, PTX loading (driver JIT) and the
//! replay of a launch manifest's host sequence on one stream.

use super::GpuError;
use super::blas::Blas;
use super::manifest::{BufferKind, LaunchManifest, Step};
use cudarc::driver::{CudaContext, CudaStream, DriverError, result, sys};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

fn driver(call: &'static str) -> impl FnOnce(DriverError) -> GpuError {
    move |e| GpuError::Driver {
        call,
        message: format!("{e:?}"),
    }
}

/// What the driver says about a device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_bytes: usize,
    pub driver_version: i32,
}

impl DeviceInfo {
    /// The PTX `.target` this device runs natively, e.g. `sm_90`.
    pub fn chip(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }
}

/// One GPU: its primary context and the stream every copy and launch goes through.
pub struct GpuDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
}

impl GpuDevice {
    /// Opens device `ordinal`. Errs (never panics) without a driver or a device.
    pub fn open(ordinal: usize) -> Result<Self, GpuError> {
        // SAFETY: only tries to dlopen libcuda; no symbol is called.
        if !unsafe { sys::is_culib_present() } {
            return Err(GpuError::NoDriver);
        }
        // cudarc panics when a symbol is missing from an old driver: keep that an error.
        std::panic::catch_unwind(|| Self::open_inner(ordinal)).unwrap_or_else(|p| {
            Err(GpuError::Driver {
                call: "initialisation",
                message: p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the driver library is unusable".into()),
            })
        })
    }

    fn open_inner(ordinal: usize) -> Result<Self, GpuError> {
        result::init().map_err(driver("cuInit"))?;
        let n = CudaContext::device_count().map_err(driver("cuDeviceGetCount"))?;
        if n <= 0 {
            return Err(GpuError::NoDevice);
        }
        if ordinal >= n as usize {
            return Err(GpuError::Usage(format!(
                "no GPU {ordinal}: the driver reports {n}"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("cuDevicePrimaryCtxRetain"))?;
        let stream = ctx.default_stream();
        let mut driver_version = 0;
        // SAFETY: writes one int.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(driver("cuDriverGetVersion"))?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(driver("cuDeviceGetName"))?,
            compute_capability: ctx
                .compute_capability()
                .map_err(driver("cuDeviceGetAttribute"))?,
            total_bytes: ctx.total_mem().map_err(driver("cuDeviceTotalMem"))?,
            driver_version,
        };
        Ok(GpuDevice { ctx, stream, info })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// (free, total) bytes of device memory.
    pub fn mem_info(&self) -> Result<(usize, usize), GpuError> {
        self.ctx.mem_get_info().map_err(driver("cuMemGetInfo"))
    }

    /// A zeroed buffer of `len` f32.
    pub fn alloc(&self, len: usize) -> Result<DeviceBuffer, GpuError> {
        DeviceBuffer::zeroed(&self.ctx, len)
    }

    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.stream
            .synchronize()
            .map_err(driver("cuStreamSynchronize"))
    }
}

/// Page-locked host memory that large copies go through. The driver copies pageable memory
/// through a small bounce buffer of its own: the gesture network's gradients came down at
/// 1.5 GB/s that way on an H200 (docs/gpu.md), a sixth of the step. One block serves the
/// process (allocated portable: every context may use it), allocated on the first large copy.
struct Staging {
    ptr: *mut f32,
}

// SAFETY: the block is plain host memory, only touched under `STAGING`'s lock.
unsafe impl Send for Staging {}

/// The staging block (`None` until first needed; `Some(None)` when pinning failed, after which
/// copies stay pageable).
static STAGING: std::sync::Mutex<Option<Option<Staging>>> = std::sync::Mutex::new(None);

/// f32 in the staging block (4 MiB): large enough that a copy's fixed cost is amortised, small
/// enough to pin anywhere.
const STAGING_LEN: usize = 1 << 20;

/// Copies shorter than this (64 KiB) go direct: staging would add a host copy to little gain.
const STAGED_MIN_LEN: usize = 1 << 14;

/// Runs a download of `len` f32: `copy(at, Some(chunk))` for consecutive chunks of the staging
/// block (the caller moves the chunk into its own memory at offset `at`), or once
/// `copy(0, None)` (direct, pageable) when the copy is short or no memory could be pinned.
/// Uploads alternate the block's halves instead (`DeviceBuffer::upload`).
fn staged(
    len: usize,
    mut copy: impl FnMut(usize, Option<&mut [f32]>) -> Result<(), DriverError>,
) -> Result<(), DriverError> {
    if len < STAGED_MIN_LEN {
        return copy(0, None);
    }
    // A poisoned lock only means another thread panicked mid-copy; the block is still valid.
    let mut guard = STAGING.lock().unwrap_or_else(|e| e.into_inner());
    let Some(block) = staging_block(&mut guard) else {
        return copy(0, None);
    };
    // SAFETY: the block holds STAGING_LEN f32 and the lock makes this its only user.
    let staging = unsafe { std::slice::from_raw_parts_mut(block.ptr, STAGING_LEN) };
    in_chunks(len, staging, |at, chunk| copy(at, Some(chunk)))
}

/// The staging block, allocated on first use (`None` when pinning failed).
fn staging_block(slot: &mut Option<Option<Staging>>) -> Option<&Staging> {
    slot.get_or_insert_with(|| {
        // SAFETY: a fresh host allocation of STAGING_LEN f32, freed never (process lifetime).
        unsafe { result::malloc_host(STAGING_LEN * 4, sys::CU_MEMHOSTALLOC_PORTABLE) }
            .ok()
            .map(|p| Staging { ptr: p.cast() })
    })
    .as_ref()
}

/// `copy(at, half, chunk)` for consecutive chunks covering `len` values, alternating between
/// the two halves of `staging` (`half` 0 or 1), so that the host fills one while the other is
/// still being copied.
fn in_halves<E>(
    len: usize,
    staging: &mut [f32],
    mut copy: impl FnMut(usize, usize, &mut [f32]) -> Result<(), E>,
) -> Result<(), E> {
    let step = (staging.len() / 2).max(1);
    let (first, second) = staging.split_at_mut(step);
    // A one-value block has no second half: it then serves every chunk.
    let halves = if second.is_empty() { 1 } else { 2 };
    for (i, at) in (0..len).step_by(step).enumerate() {
        let half = i % halves;
        let chunk = if half == 0 {
            &mut first[..]
        } else {
            &mut second[..]
        };
        let n = step.min(len - at);
        copy(at, half, &mut chunk[..n])?;
    }
    Ok(())
}

/// `copy(at, chunk)` for consecutive chunks of `staging` covering `len` values.
fn in_chunks<E>(
    len: usize,
    staging: &mut [f32],
    mut copy: impl FnMut(usize, &mut [f32]) -> Result<(), E>,
) -> Result<(), E> {
    let step = staging.len().max(1);
    for at in (0..len).step_by(step) {
        copy(at, &mut staging[..step.min(len - at)])?;
    }
    Ok(())
}

/// `len` f32 of device memory, freed on drop.
pub struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    len: usize,
    ctx: Arc<CudaContext>,
}

impl DeviceBuffer {
    /// `len` f32 of device memory with whatever it held.
    fn uninit(ctx: &Arc<CudaContext>, len: usize) -> Result<Self, GpuError> {
        ctx.bind_to_thread().map_err(driver("cuCtxSetCurrent"))?;
        // SAFETY: a fresh allocation; callers write it before any kernel reads it.
        let ptr = unsafe { result::malloc_sync(len.max(1) * 4) }.map_err(driver("cuMemAlloc"))?;
        Ok(DeviceBuffer {
            ptr,
            len,
            ctx: Arc::clone(ctx),
        })
    }

    fn zeroed(ctx: &Arc<CudaContext>, len: usize) -> Result<Self, GpuError> {
        let mut buf = Self::uninit(ctx, len)?;
        buf.zero()?;
        Ok(buf)
    }

    /// Fills the buffer with NaN (a check that nothing reads it before writing).
    fn poison(&mut self) -> Result<(), GpuError> {
        // SAFETY: `ptr` holds at least `len.max(1)` 32-bit words.
        unsafe { sys::cuMemsetD32_v2(self.ptr, f32::NAN.to_bits(), self.len.max(1)) }
            .result()
            .map_err(driver("cuMemsetD32"))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn upload(&mut self, data: &[f32]) -> Result<(), GpuError> {
        if data.len() != self.len {
            return Err(GpuError::Usage(format!(
                "upload of {} values into a buffer of {}",
                data.len(),
                self.len
            )));
        }
        self.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        if data.len() < STAGED_MIN_LEN {
            // SAFETY: lengths checked above; the copy is synchronous.
            return unsafe { result::memcpy_htod_sync(self.ptr, data) }
                .map_err(driver("cuMemcpyHtoD"));
        }
        // A poisoned lock only means another thread panicked mid-copy; the block is still valid.
        let mut guard = STAGING.lock().unwrap_or_else(|e| e.into_inner());
        let Some(block) = staging_block(&mut guard) else {
            // SAFETY: lengths checked above; the copy is synchronous.
            return unsafe { result::memcpy_htod_sync(self.ptr, data) }
                .map_err(driver("cuMemcpyHtoD"));
        };
        // SAFETY: the block holds STAGING_LEN f32 and the lock makes this its only user.
        let staging = unsafe { std::slice::from_raw_parts_mut(block.ptr, STAGING_LEN) };
        let stream = self.ctx.default_stream();
        let events = [self.copy_event()?, self.copy_event()?];
        let mut pending = [false; 2];
        let copied = in_halves(data.len(), staging, |at, half, chunk| {
            if pending[half] {
                events[half].synchronize()?;
            }
            chunk.copy_from_slice(&data[at..at + chunk.len()]);
            // SAFETY: `at + chunk.len()` ≤ len (checked above); the chunk is page-locked and
            // not written again before its event completes (below, or at the end).
            unsafe {
                result::memcpy_htod_async(self.ptr + 4 * at as u64, &*chunk, stream.cu_stream())
            }?;
            events[half].record(&stream)?;
            pending[half] = true;
            Ok(())
        });
        // Whatever happened, no copy may still read the block once the lock is released.
        for (e, p) in events.iter().zip(pending) {
            if p {
                e.synchronize().map_err(driver("cuEventSynchronize"))?;
            }
        }
        copied.map_err(driver("cuMemcpyHtoDAsync"))
    }

    /// An event that only orders (no timing), for the staged upload's halves.
    fn copy_event(&self) -> Result<cudarc::driver::CudaEvent, GpuError> {
        self.ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
            .map_err(driver("cuEventCreate"))
    }

    pub fn download(&self) -> Result<Vec<f32>, GpuError> {
        let mut out = vec![0f32; self.len];
        self.download_into(&mut out)?;
        Ok(out)
    }

    /// Copies the buffer into `out`, which must have the buffer's length.
    pub fn download_into(&self, out: &mut [f32]) -> Result<(), GpuError> {
        if out.len() != self.len {
            return Err(GpuError::Usage(format!(
                "download of a buffer of {} values into {}",
                self.len,
                out.len()
            )));
        }
        self.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        staged(out.len(), |at, staging| match staging {
            Some(staging) => {
                let n = staging.len();
                // SAFETY: `at + n` ≤ len (checked above); synchronous.
                unsafe { result::memcpy_dtoh_sync(&mut *staging, self.ptr + 4 * at as u64) }?;
                out[at..at + n].copy_from_slice(staging);
                Ok(())
            }
            // SAFETY: lengths checked above; the copy is synchronous.
            None => unsafe { result::memcpy_dtoh_sync(&mut *out, self.ptr) },
        })
        .map_err(driver("cuMemcpyDtoH"))
    }

    /// Copies `src` (same length) into this buffer, on the device.
    pub fn copy_from(&mut self, src: &DeviceBuffer) -> Result<(), GpuError> {
        if src.len != self.len {
            return Err(GpuError::Usage(format!(
                "device copy of {} values into a buffer of {}",
                src.len, self.len
            )));
        }
        self.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        // SAFETY: both allocations hold `len.max(1) * 4` bytes; the copy is synchronous.
        unsafe { result::memcpy_dtod_sync(self.ptr, src.ptr, self.len * 4) }
            .map_err(driver("cuMemcpyDtoD"))
    }

    /// Sets every value to zero.
    pub fn zero(&mut self) -> Result<(), GpuError> {
        self.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        // SAFETY: `ptr` holds at least `len.max(1) * 4` bytes.
        unsafe { result::memset_d8_sync(self.ptr, 0, self.len.max(1) * 4) }
            .map_err(driver("cuMemsetD8"))
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by `malloc_sync` and not freed elsewhere. A failure here
            // (context torn down) leaks nothing the process keeps.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// Device time of one kernel launch, measured only while profiling is on.
#[derive(Clone, Debug)]
pub struct KernelTime {
    pub kernel: String,
    pub grid: [u32; 3],
    /// Shapes of the kernel's buffer arguments, to tell which operation it is.
    pub shapes: Vec<Vec<usize>>,
    pub ms: f64,
}

/// Measurements of one replay.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub launches: usize,
    /// Device time between the first and last launch (CUDA events), in ms.
    pub device_ms: f64,
    /// Wall-clock time of the whole replay including temporaries' alloc/free, in ms.
    pub wall_ms: f64,
    /// Most bytes held at once by the arguments plus live temporaries.
    pub peak_bytes: usize,
    /// Each launch's device time, in order, when the module profiles (else empty). Profiling
    /// records an event after every launch, which itself costs a little device time.
    pub kernels: Vec<KernelTime>,
}

/// A PTX module JIT-compiled by the driver into a device's context. Several manifests (a
/// model's `forward_train` and `backward`) launch kernels of one module.
pub struct GpuModule {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: sys::CUmodule,
    /// Freed temporaries by length, reused by later replays of this module's functions: every
    /// step allocates the same sizes in the same order, so after the first one no temporary
    /// costs a `cuMemAlloc`, a `cuMemFree` or the stream drain a free needs.
    pool: RefCell<HashMap<usize, Vec<DeviceBuffer>>>,
    /// Whether replays time every launch (`RunStats::kernels`).
    profiling: Cell<bool>,
    /// Whether temporaries start as NaN (checks) rather than as whatever they held: generated
    /// code writes a temporary before reading it, so filling one is wasted bandwidth (the
    /// gesture step allocates gigabytes of im2col matrices).
    poison: Cell<bool>,
    /// Whether matrix products run on the tensor cores in TF32 (off: full f32).
    tf32: Cell<bool>,
    /// cuBLAS, opened at the first matrix product step.
    blas: RefCell<Option<Blas>>,
    /// Whether replays run as CUDA graphs (see [`GpuModel::run`]); off after a capture
    /// failed, with the reason in `graph_error`.
    graphs: Cell<bool>,
    graph_error: RefCell<Option<String>>,
    /// The stream graphs are captured on and launched on (a graph cannot be captured on the
    /// default stream), created on first use.
    graph_stream: RefCell<Option<Arc<CudaStream>>>,
}

impl GpuModule {
    /// JIT-compiles `ptx` with the driver.
    pub fn load(dev: &GpuDevice, ptx: &str) -> Result<Rc<Self>, GpuError> {
        let image = CString::new(ptx)
            .map_err(|_| GpuError::Manifest("the PTX contains a NUL byte".into()))?;
        dev.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        // SAFETY: a NUL-terminated PTX text.
        let module = unsafe { result::module::load_data(image.as_ptr().cast()) }
            .map_err(driver("cuModuleLoadData (PTX JIT)"))?;
        Ok(Rc::new(GpuModule {
            ctx: Arc::clone(&dev.ctx),
            stream: Arc::clone(&dev.stream),
            module,
            pool: RefCell::new(HashMap::new()),
            profiling: Cell::new(false),
            poison: Cell::new(false),
            tf32: Cell::new(false),
            blas: RefCell::new(None),
            graphs: Cell::new(std::env::var("SNNC_GPU_GRAPHS").map_or(true, |v| v != "0")),
            graph_error: RefCell::new(None),
            graph_stream: RefCell::new(None),
        }))
    }

    /// Replays as CUDA graphs (on, the default; `SNNC_GPU_GRAPHS=0` starts with them off) or
    /// launch by launch.
    pub fn set_graphs(&self, on: bool) {
        self.graphs.set(on);
    }

    /// Whether replays run as graphs now.
    pub fn graphs(&self) -> bool {
        self.graphs.get()
    }

    /// Why graphs were turned off, if a capture failed.
    pub fn graph_error(&self) -> Option<String> {
        self.graph_error.borrow().clone()
    }

    fn graph_stream(&self) -> Result<Arc<CudaStream>, GpuError> {
        if let Some(s) = self.graph_stream.borrow().as_ref() {
            return Ok(Arc::clone(s));
        }
        let s = self.ctx.new_stream().map_err(driver("cuStreamCreate"))?;
        *self.graph_stream.borrow_mut() = Some(Arc::clone(&s));
        Ok(s)
    }

    /// cuBLAS bound to this module's stream, opened on first use.
    fn blas(&self) -> Result<std::cell::Ref<'_, Blas>, GpuError> {
        if self.blas.borrow().is_none() {
            let blas = Blas::open(self.stream.cu_stream().cast())?;
            *self.blas.borrow_mut() = Some(blas);
        }
        std::cell::Ref::filter_map(self.blas.borrow(), Option::as_ref).map_err(|_| {
            GpuError::Driver {
                call: "cuBLAS",
                message: "the handle was not kept".into(),
            }
        })
    }

    /// Σ|x| of `buf` (a spike count for 0/1 values, exact), computed on the device after the
    /// work already queued: only the sum crosses the bus.
    pub fn sum_abs(&self, buf: &DeviceBuffer) -> Result<f64, GpuError> {
        let blas = self.blas()?;
        // SAFETY: `buf` holds `len` f32 of this context's memory.
        unsafe { blas.sum_abs(buf.ptr, buf.len) }
    }

    /// Zeroes `buf` after the work already queued on this module's stream, without waiting
    /// (the backward's results before each run: one call per gradient, each a host round trip
    /// when synchronous).
    pub fn zero_queued(&self, buf: &mut DeviceBuffer) -> Result<(), GpuError> {
        self.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        // SAFETY: `buf` holds at least `len.max(1) * 4` bytes of this context's memory; later
        // work on the stream runs after the memset.
        unsafe { result::memset_d8_async(buf.ptr, 0, buf.len.max(1) * 4, self.stream.cu_stream()) }
            .map_err(driver("cuMemsetD8Async"))
    }

    /// Makes later replays of this module's functions time each launch.
    pub fn set_profiling(&self, on: bool) {
        self.profiling.set(on);
    }

    /// A temporary of `len` f32: a pooled one, or a new allocation; NaN-filled when
    /// poisoning (enqueued on the default stream, after whatever last used the buffer).
    fn take_temp(&self, len: usize) -> Result<DeviceBuffer, GpuError> {
        let pooled = self.pool.borrow_mut().get_mut(&len).and_then(Vec::pop);
        let mut b = match pooled {
            Some(b) => b,
            None => DeviceBuffer::uninit(&self.ctx, len)?,
        };
        if self.poison.get() {
            b.poison()?;
        }
        Ok(b)
    }

    /// Runs later matrix products (convolutions, dense layers) on the tensor cores with
    /// TF32 operands (10-bit mantissa, f32 sums), as PyTorch does for convolutions by
    /// default; off: full f32, which the differential checks need.
    pub fn set_tf32(&self, on: bool) {
        self.tf32.set(on);
    }

    /// Makes later temporaries start as NaN, so that a read before the first write shows in
    /// the results (checks; off by default).
    pub fn set_poison_temporaries(&self, on: bool) {
        self.poison.set(on);
    }

    /// Returns a temporary for reuse. Kernels still queued that read it finish before any
    /// later use: a replay's launches go to one stream, and every replay waits for its stream
    /// before it returns, so replays never overlap.
    fn give_back(&self, b: DeviceBuffer) {
        self.pool.borrow_mut().entry(b.len).or_default().push(b);
    }
}

impl Drop for GpuModule {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: loaded in `load`, unloaded once here, after every `GpuModel` holding
            // this module (through its `Rc`) is gone.
            let _ = unsafe { result::module::unload(self.module) };
        }
    }
}

/// One host function of a loaded module: its manifest and resolved kernels.
pub struct GpuModel {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Keeps the module loaded while its functions may be launched; holds the temporaries.
    module: Rc<GpuModule>,
    functions: HashMap<String, sys::CUfunction>,
    manifest: LaunchManifest,
    /// The replay captured as a CUDA graph, for the buffers and precision it was captured with.
    graph: RefCell<Option<Captured>>,
}

/// What a graph was captured for: the device addresses of the arguments (temporaries come
/// from the module's pool, which keeps every buffer it ever allocated) and the precision of
/// the matrix products.
#[derive(PartialEq, Eq)]
struct GraphKey {
    args: Vec<u64>,
    tf32: bool,
}

/// A replay captured once and launched as one graph: a launch each for hundreds of small
/// kernels costs more host time and more device idle time between kernels than they run.
struct Captured {
    key: GraphKey,
    graph: cudarc::driver::CudaGraph,
    launches: usize,
    peak_bytes: usize,
}

/// A replay's launches enqueued on a stream.
struct Enqueued {
    launches: usize,
    peak_bytes: usize,
    /// Profiling: (kernel, grid, argument shapes, an event recorded after it).
    marks: Vec<Mark>,
}

type Mark = (String, [u32; 3], Vec<Vec<usize>>, cudarc::driver::CudaEvent);

impl GpuModel {
    /// JIT-compiles `ptx` with the driver and resolves every kernel of `manifest`.
    pub fn load(dev: &GpuDevice, ptx: &str, manifest: LaunchManifest) -> Result<Self, GpuError> {
        manifest.check().map_err(GpuError::Manifest)?;
        let module = GpuModule::load(dev, ptx)?;
        Self::in_module(&module, manifest)
    }

    /// Resolves every kernel of `manifest` in an already loaded `module`.
    pub fn in_module(module: &Rc<GpuModule>, manifest: LaunchManifest) -> Result<Self, GpuError> {
        manifest.check().map_err(GpuError::Manifest)?;
        module
            .ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        let mut functions = HashMap::with_capacity(manifest.kernels.len());
        for k in &manifest.kernels {
            let name = CString::new(k.name.as_str())
                .map_err(|_| GpuError::Manifest(format!("kernel name `{}`", k.name)))?;
            // SAFETY: the module is loaded and kept alive by the `Rc` this model holds.
            let f = unsafe { result::module::get_function(module.module, name) }
                .map_err(driver("cuModuleGetFunction"))?;
            functions.insert(k.name.clone(), f);
        }
        Ok(GpuModel {
            ctx: Arc::clone(&module.ctx),
            stream: Arc::clone(&module.stream),
            module: Rc::clone(module),
            functions,
            manifest,
            graph: RefCell::new(None),
        })
    }

    pub fn manifest(&self) -> &LaunchManifest {
        &self.manifest
    }

    /// The module this function's kernels live in.
    pub fn module(&self) -> &Rc<GpuModule> {
        &self.module
    }

    /// One zeroed device buffer per forward argument.
    pub fn alloc_args(&self) -> Result<Vec<DeviceBuffer>, GpuError> {
        self.manifest
            .args
            .iter()
            .map(|a| DeviceBuffer::zeroed(&self.ctx, a.shape.iter().product()))
            .collect()
    }

    /// Replays the host sequence over `args` (one buffer per argument) and waits. Unless
    /// profiling or poisoning, the sequence is captured as a CUDA graph on the first replay
    /// with these buffers and launched as one; should capturing fail, graphs stay off for the
    /// module ([`GpuModule::graph_error`]) and replays go launch by launch.
    pub fn run(&self, args: &[&DeviceBuffer]) -> Result<RunStats, GpuError> {
        self.replay(args, true)
    }

    /// [`Self::run`]; `graphs`: whether these buffers may be worth capturing (not for one
    /// replay over fresh buffers, which a graph would cost more than it saves).
    fn replay(&self, args: &[&DeviceBuffer], graphs: bool) -> Result<RunStats, GpuError> {
        let m = &self.manifest;
        if args.len() != m.args.len() {
            return Err(GpuError::Usage(format!(
                "{} takes {} buffers, {} given",
                m.model,
                m.args.len(),
                args.len()
            )));
        }
        for (a, b) in m.args.iter().zip(args) {
            if b.len != a.shape.iter().product::<usize>() {
                return Err(GpuError::Usage(format!(
                    "buffer for `{}` has {} elements, expected shape {:?}",
                    a.name, b.len, a.shape
                )));
            }
        }
        self.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        let module = &self.module;
        if graphs && module.graphs.get() && !module.profiling.get() && !module.poison.get() {
            match self.run_graph(args) {
                Ok(stats) => return Ok(stats),
                Err(e) => {
                    *self.graph.borrow_mut() = None;
                    module.graphs.set(false);
                    *module.graph_error.borrow_mut() = Some(e.to_string());
                }
            }
        }
        self.run_direct(args)
    }

    fn event(&self) -> Result<cudarc::driver::CudaEvent, GpuError> {
        self.ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver("cuEventCreate"))
    }

    /// The replay launch by launch on the module's stream.
    fn run_direct(&self, args: &[&DeviceBuffer]) -> Result<RunStats, GpuError> {
        let wall = Instant::now();
        let (start, end) = (self.event()?, self.event()?);
        start
            .record(&self.stream)
            .map_err(driver("cuEventRecord"))?;
        let q = self.enqueue(args, &self.stream, self.module.profiling.get())?;
        end.record(&self.stream).map_err(driver("cuEventRecord"))?;
        self.stream
            .synchronize()
            .map_err(driver("cuStreamSynchronize"))?;
        let device_ms = f64::from(
            start
                .elapsed_ms(&end)
                .map_err(driver("cuEventElapsedTime"))?,
        );
        let mut kernels = Vec::with_capacity(q.marks.len());
        let mut previous = &start;
        for (kernel, grid, shapes, mark) in &q.marks {
            let ms = previous
                .elapsed_ms(mark)
                .map_err(driver("cuEventElapsedTime"))?;
            kernels.push(KernelTime {
                kernel: kernel.clone(),
                grid: *grid,
                shapes: shapes.clone(),
                ms: f64::from(ms),
            });
            previous = mark;
        }
        Ok(RunStats {
            launches: q.launches,
            device_ms,
            wall_ms: wall.elapsed().as_secs_f64() * 1e3,
            peak_bytes: q.peak_bytes,
            kernels,
        })
    }

    /// The replay as one graph launch on the module's graph stream, captured first when
    /// there is none for these buffers and this precision.
    fn run_graph(&self, args: &[&DeviceBuffer]) -> Result<RunStats, GpuError> {
        let wall = Instant::now();
        let gs = self.module.graph_stream()?;
        // The graph runs after everything already queued on the module's stream (uploads,
        // zeroing).
        let ready = self.event()?;
        ready
            .record(&self.stream)
            .map_err(driver("cuEventRecord"))?;
        gs.wait(&ready).map_err(driver("cuStreamWaitEvent"))?;
        let key = GraphKey {
            args: args.iter().map(|b| b.ptr).collect(),
            tf32: self.module.tf32.get(),
        };
        let mut cache = self.graph.borrow_mut();
        if cache.as_ref().is_none_or(|c| c.key != key) {
            *cache = None;
            *cache = Some(self.capture(args, &gs, key)?);
        }
        let captured = cache
            .as_ref()
            .ok_or_else(|| GpuError::Manifest("internal: no captured graph".into()))?;
        let (start, end) = (self.event()?, self.event()?);
        start.record(&gs).map_err(driver("cuEventRecord"))?;
        captured.graph.launch().map_err(driver("cuGraphLaunch"))?;
        end.record(&gs).map_err(driver("cuEventRecord"))?;
        gs.synchronize().map_err(driver("cuStreamSynchronize"))?;
        let device_ms = f64::from(
            start
                .elapsed_ms(&end)
                .map_err(driver("cuEventElapsedTime"))?,
        );
        Ok(RunStats {
            launches: captured.launches,
            device_ms,
            wall_ms: wall.elapsed().as_secs_f64() * 1e3,
            peak_bytes: captured.peak_bytes,
            kernels: Vec::new(),
        })
    }

    /// Captures the replay on `gs` (cuBLAS's work goes there meanwhile). Temporaries are
    /// taken from the module's pool as in a direct replay and given back; the pool never
    /// frees a buffer, so the graph's addresses stay valid, and replays never overlap, so
    /// other functions may use the same temporaries in between.
    fn capture(
        &self,
        args: &[&DeviceBuffer],
        gs: &Arc<CudaStream>,
        key: GraphKey,
    ) -> Result<Captured, GpuError> {
        let gemm = self
            .manifest
            .steps
            .iter()
            .any(|s| matches!(s, Step::Gemm { .. }));
        if gemm {
            self.module.blas()?.bind(gs.cu_stream().cast())?;
        }
        gs.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(driver("cuStreamBeginCapture"))?;
        let enqueued = self.enqueue(args, gs, false);
        // Ended whatever happened, so that the stream leaves capture mode.
        let graph = gs.end_capture(sys::CUgraphInstantiate_flags(0));
        if gemm {
            self.module.blas()?.bind(self.stream.cu_stream().cast())?;
        }
        let enqueued = enqueued?;
        let graph = graph
            .map_err(driver("cuStreamEndCapture"))?
            .ok_or_else(|| GpuError::Driver {
                call: "cuStreamEndCapture",
                message: "no graph was captured".into(),
            })?;
        Ok(Captured {
            key,
            graph,
            launches: enqueued.launches,
            peak_bytes: enqueued.peak_bytes,
        })
    }

    /// Enqueues the host sequence on `stream`: temporaries from the module's pool (given
    /// back at the end, kernels still queued finish before any later use: see
    /// [`GpuModule::give_back`]), kernel launches and cuBLAS products. With `profiling`, an
    /// event after every launch.
    fn enqueue(
        &self,
        args: &[&DeviceBuffer],
        stream: &Arc<CudaStream>,
        profiling: bool,
    ) -> Result<Enqueued, GpuError> {
        let m = &self.manifest;
        let mut temps: Vec<Option<DeviceBuffer>> = (0..m.buffers.len()).map(|_| None).collect();
        let result = self.enqueue_steps(args, stream, profiling, &mut temps);
        // A manifest frees every temporary; any it did not (or an error left) goes back too.
        for b in temps.into_iter().flatten() {
            self.module.give_back(b);
        }
        result
    }

    fn enqueue_steps(
        &self,
        args: &[&DeviceBuffer],
        stream: &Arc<CudaStream>,
        profiling: bool,
        temps: &mut [Option<DeviceBuffer>],
    ) -> Result<Enqueued, GpuError> {
        let m = &self.manifest;
        let arg_bytes: usize = args.iter().map(|b| b.len * 4).sum();
        let (mut live, mut peak) = (arg_bytes, arg_bytes);
        let mut launches = 0;
        // Device address of buffer `id`: its argument, or its live temporary (views: the root).
        let pointer = |id: usize, temps: &[Option<DeviceBuffer>]| -> Result<u64, GpuError> {
            let root = m.root(id).map_err(GpuError::Manifest)?;
            match &m.buffers[root].kind {
                BufferKind::Arg { arg } => Ok(args[*arg].ptr),
                _ => temps[root]
                    .as_ref()
                    .map(|b| b.ptr)
                    .ok_or_else(|| GpuError::Manifest(format!("buffer {root} is not allocated"))),
            }
        };
        let mut marks = Vec::new();
        for step in &m.steps {
            match step {
                Step::Alloc { buffer } => {
                    let n = m.buffers[*buffer].elements();
                    temps[*buffer] = Some(self.module.take_temp(n)?);
                    live += n * 4;
                    peak = peak.max(live);
                }
                Step::Free { buffer } => {
                    if let Some(b) = temps[*buffer].take() {
                        live -= b.len * 4;
                        self.module.give_back(b);
                    }
                }
                Step::Launch {
                    kernel,
                    grid,
                    block,
                    args: kargs,
                } => {
                    let f =
                        self.functions.get(kernel).copied().ok_or_else(|| {
                            GpuError::Manifest(format!("unknown kernel `{kernel}`"))
                        })?;
                    let mut ptrs: Vec<u64> = kargs
                        .iter()
                        .map(|a| pointer(a.buffer, temps))
                        .collect::<Result<_, _>>()?;
                    let mut params: Vec<*mut c_void> = ptrs
                        .iter_mut()
                        .map(|p| (p as *mut u64).cast::<c_void>())
                        .collect();
                    // SAFETY: the manifest was checked (arity, buffers live and sized as the
                    // kernel's static memrefs); each parameter is one device pointer.
                    unsafe {
                        result::launch_kernel(
                            f,
                            (grid[0], grid[1], grid[2]),
                            (block[0], block[1], block[2]),
                            0,
                            stream.cu_stream(),
                            &mut params,
                        )
                    }
                    .map_err(driver("cuLaunchKernel"))?;
                    launches += 1;
                    if profiling {
                        let shapes = kargs.iter().map(|a| a.shape.clone()).collect();
                        marks.push((kernel.clone(), *grid, shapes, self.mark(stream)?));
                    }
                }
                Step::Gemm { a, b, c, gemm } => {
                    let (pa, pb, pc) = (
                        pointer(*a, temps)?,
                        pointer(*b, temps)?,
                        pointer(*c, temps)?,
                    );
                    let blas = self.module.blas()?;
                    blas.use_tf32(self.module.tf32.get())?;
                    // SAFETY: the manifest check bounds each extent by its buffer's length,
                    // and the buffers are device memory of this context.
                    unsafe { blas.sgemm(gemm, pa, pb, pc) }?;
                    launches += 1;
                    if profiling {
                        let shapes = vec![vec![gemm.m, gemm.k], vec![gemm.k, gemm.n]];
                        let name = format!(
                            "cublasSgemmStridedBatched{}{}",
                            if gemm.trans_a { "_TA" } else { "" },
                            if gemm.trans_b { "_TB" } else { "" }
                        );
                        let grid = [u32::try_from(gemm.batch).unwrap_or(u32::MAX), 1, 1];
                        marks.push((name, grid, shapes, self.mark(stream)?));
                    }
                }
            }
        }
        Ok(Enqueued {
            launches,
            peak_bytes: peak,
            marks,
        })
    }

    /// An event recorded on the stream now (profiling: the end of the last launch).
    fn mark(&self, stream: &CudaStream) -> Result<cudarc::driver::CudaEvent, GpuError> {
        let mark = self.event()?;
        mark.record(stream).map_err(driver("cuEventRecord"))?;
        Ok(mark)
    }

    /// Uploads `host` (one vector per forward argument, in order), runs, and downloads the
    /// outputs and the state the forward updated back into `host`.
    pub fn forward(&self, host: &mut [Vec<f32>]) -> Result<RunStats, GpuError> {
        let mut bufs = self.alloc_args()?;
        if host.len() != bufs.len() {
            return Err(GpuError::Usage(format!(
                "{} takes {} arguments, {} given",
                self.manifest.model,
                bufs.len(),
                host.len()
            )));
        }
        for (b, h) in bufs.iter_mut().zip(host.iter()) {
            b.upload(h)?;
        }
        let stats = self.replay(&bufs.iter().collect::<Vec<_>>(), false)?;
        for ((a, b), h) in self.manifest.args.iter().zip(&bufs).zip(host.iter_mut()) {
            if a.role == "output" || a.role == "state" {
                *h = b.download()?;
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI has no GPU: opening one must be an error with a clear message, never a panic.
    #[test]
    fn opening_a_device_never_panics() {
        match GpuDevice::open(0) {
            Ok(d) => eprintln!("GPU present: {} ({})", d.info().name, d.info().chip()),
            Err(e) => {
                eprintln!("skipping GPU execution: {e}");
                let text = e.to_string();
                assert!(!text.is_empty());
                if matches!(e, GpuError::NoDriver) {
                    assert!(text.contains("libcuda.so") && text.contains("--device gpu"));
                }
            }
        }
    }

    /// Uploads alternate halves and cover every value once, in order.
    #[test]
    fn staged_halves_cover_the_upload_exactly() {
        for (len, block) in [
            (0, 4),
            (1, 4),
            (2, 4),
            (5, 4),
            (11, 4),
            (12, 6),
            (7, 1),
            (3, 2),
        ] {
            let host: Vec<f32> = (0..len).map(|v| v as f32).collect();
            let (mut device, mut staging) = (vec![f32::NAN; len], vec![0f32; block]);
            let mut halves = Vec::new();
            in_halves::<()>(len, &mut staging, |at, half, chunk| {
                chunk.copy_from_slice(&host[at..at + chunk.len()]);
                device[at..at + chunk.len()].copy_from_slice(chunk);
                halves.push(half);
                Ok(())
            })
            .expect("the copy cannot fail");
            assert_eq!(device, host, "len {len}, block {block}");
            let n = if block < 2 { 1 } else { 2 };
            assert!(halves.iter().enumerate().all(|(i, h)| *h == i % n));
        }
    }

    /// Staged copies cover every value once, in order, whatever the lengths' remainders.
    #[test]
    fn staged_chunks_cover_the_copy_exactly() {
        for (len, block) in [(0, 4), (1, 4), (4, 4), (5, 4), (11, 4), (12, 4), (7, 1)] {
            let host: Vec<f32> = (0..len).map(|v| v as f32).collect();
            let (mut device, mut staging) = (vec![f32::NAN; len], vec![0f32; block]);
            // Upload: host → staging → device.
            in_chunks::<()>(len, &mut staging, |at, chunk| {
                chunk.copy_from_slice(&host[at..at + chunk.len()]);
                device[at..at + chunk.len()].copy_from_slice(chunk);
                Ok(())
            })
            .expect("the copy cannot fail");
            assert_eq!(device, host, "len {len}, block {block}");
            // Download: device → staging → host, and an error stops the copy.
            let mut back = vec![f32::NAN; len];
            in_chunks::<()>(len, &mut staging, |at, chunk| {
                chunk.copy_from_slice(&device[at..at + chunk.len()]);
                back[at..at + chunk.len()].copy_from_slice(chunk);
                Ok(())
            })
            .expect("the copy cannot fail");
            assert_eq!(back, host);
            let mut calls = 0;
            let failed = in_chunks(len, &mut staging, |_, _| {
                calls += 1;
                Err("driver")
            });
            assert_eq!((failed.is_err(), calls), (len > 0, usize::from(len > 0)));
        }
    }
}
