//! The launch manifest `snnc build --target gpu -o DIR` writes next to the PTX: the forward's
//! arguments, every device buffer, every kernel, and the host-side sequence that replays it.

use serde::{Deserialize, Serialize};

/// Value of [`LaunchManifest::format`]; bumped on incompatible changes.
pub const FORMAT: &str = "snnc-launch-v2";

/// Everything a runtime needs to run one model's forward from its PTX.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchManifest {
    pub format: String,
    pub model: String,
    /// The `.target` the PTX was generated for, e.g. `sm_90`.
    pub chip: String,
    pub batch: usize,
    /// File name of the PTX module next to the manifest.
    pub ptx: String,
    /// Arguments of `@<model>_forward`, in order (inputs, params, state, outputs).
    pub args: Vec<ArgSpec>,
    /// Every buffer the launches touch; `id` is the index.
    pub buffers: Vec<BufferSpec>,
    /// Every kernel entry in the PTX, in first-launch order.
    pub kernels: Vec<KernelSpec>,
    /// The host program: allocations, launches and frees, in order.
    pub steps: Vec<Step>,
}

/// One argument of the forward function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgSpec {
    pub name: String,
    /// `input`, `param`, `state` (written by the forward: batchnorm running statistics) or
    /// `output`.
    pub role: String,
    pub shape: Vec<usize>,
}

/// A device buffer of f32, row-major.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferSpec {
    pub id: usize,
    pub shape: Vec<usize>,
    #[serde(flatten)]
    pub kind: BufferKind,
}

impl BufferSpec {
    /// The element count ([`LaunchManifest::check`] has made sure it fits a `usize`).
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The element count of `shape`, or `None` when it overflows (a corrupt manifest).
fn checked_elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d))
}

/// Where a buffer's memory comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BufferKind {
    /// Forward argument number `arg` (owned by the caller).
    Arg { arg: usize },
    /// An intermediate: allocated by an `alloc` step, released by a `free` step.
    Temp,
    /// The same memory as buffer `of`, reshaped (same element count, offset 0).
    View { of: usize },
}

/// One `.entry` of the PTX.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelSpec {
    pub name: String,
    /// Number of parameters: one 64-bit device pointer per buffer argument.
    pub params: usize,
}

/// One host-side action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    Alloc {
        buffer: usize,
    },
    Launch {
        kernel: String,
        grid: [u32; 3],
        block: [u32; 3],
        /// Buffer ids passed as the kernel's pointer parameters, in order.
        args: Vec<LaunchArg>,
    },
    Free {
        buffer: usize,
    },
    /// A matrix product by the runtime's BLAS (cuBLAS): buffers `a`, `b` and `c` (ids) as
    /// [`Gemm`] describes.
    Gemm {
        a: usize,
        b: usize,
        c: usize,
        gemm: Gemm,
    },
}

/// A row-major f32 matrix product over `batch` matrices, as strided batched SGEMM:
/// `C[i] = op(A[i]) · op(B[i])`, or `C[i] += …` when `accumulate`, for `i < batch`, where
/// `X[i]` starts `i · stride_x` elements into its buffer (stride 0: one matrix for all).
/// `op(A)` is `m × k`: `A` stored `m × k`, or `k × m` when `trans_a`; `op(B)` is `k × n`: `B`
/// stored `k × n`, or `n × k` when `trans_b`; `C` is `m × n`. All dense, no padding.
///
/// Generated code calls it as `snn_gemm_f32(a, b, c, batch, m, n, k, trans_a, trans_b,
/// stride_a, stride_b, stride_c, accumulate)` (pointers and integers as `index`; see
/// [`Gemm::from_abi`]); on a GPU the call is this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gemm {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub accumulate: bool,
}

impl Gemm {
    /// The integer arguments of `snn_gemm_f32` after its three pointers, in order.
    pub const ABI_INTS: usize = 10;

    /// Reads `snn_gemm_f32`'s integer arguments: `[batch, m, n, k, trans_a, trans_b,
    /// stride_a, stride_b, stride_c, accumulate]`. Errs on negative sizes, flags other than
    /// 0 or 1, and sizes cuBLAS's 32-bit dimensions cannot hold.
    pub fn from_abi(v: [i64; Self::ABI_INTS]) -> Result<Gemm, String> {
        let size = |i: usize| {
            usize::try_from(v[i])
                .ok()
                .filter(|_| i >= 6 || v[i] <= i64::from(i32::MAX))
                .ok_or_else(|| format!("gemm argument {i} is {}", v[i]))
        };
        let flag = |i: usize| match v[i] {
            0 => Ok(false),
            1 => Ok(true),
            x => Err(format!("gemm flag {i} is {x}, not 0 or 1")),
        };
        Ok(Gemm {
            batch: size(0)?,
            m: size(1)?,
            n: size(2)?,
            k: size(3)?,
            trans_a: flag(4)?,
            trans_b: flag(5)?,
            stride_a: size(6)?,
            stride_b: size(7)?,
            stride_c: size(8)?,
            accumulate: flag(9)?,
        })
    }

    /// One `m × n` product of depth `k`, both operands stored as used, overwriting `C`.
    pub fn single(m: usize, n: usize, k: usize) -> Gemm {
        Gemm {
            batch: 1,
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            accumulate: false,
        }
    }

    /// `snn_gemm_f32`'s integer arguments, the inverse of [`Gemm::from_abi`].
    pub fn to_abi(&self) -> [i64; Self::ABI_INTS] {
        let int = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        [
            int(self.batch),
            int(self.m),
            int(self.n),
            int(self.k),
            i64::from(self.trans_a),
            i64::from(self.trans_b),
            int(self.stride_a),
            int(self.stride_b),
            int(self.stride_c),
            i64::from(self.accumulate),
        ]
    }

    /// Elements of `A`, `B` and `C` the product touches, from each buffer's start; `None` when
    /// that overflows a `usize` (no buffer is that large).
    pub fn extents(&self) -> Option<[usize; 3]> {
        let last = self.batch.checked_sub(1)?;
        let span = |stride: usize, rows: usize, cols: usize| {
            last.checked_mul(stride)?
                .checked_add(rows.checked_mul(cols)?)
        };
        Some([
            span(self.stride_a, self.m, self.k)?,
            span(self.stride_b, self.k, self.n)?,
            span(self.stride_c, self.m, self.n)?,
        ])
    }
}

/// A kernel argument: a buffer and the shape the kernel sees it with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchArg {
    pub buffer: usize,
    pub shape: Vec<usize>,
}

impl LaunchManifest {
    pub fn from_json(text: &str) -> Result<Self, String> {
        let m: LaunchManifest =
            serde_json::from_str(text).map_err(|e| format!("invalid launch manifest: {e}"))?;
        m.check()?;
        Ok(m)
    }

    pub fn to_json(&self) -> String {
        // Serialising plain owned data cannot fail; keep a readable fallback anyway.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Consistency checks a runtime relies on before touching device memory: ids in range,
    /// views of real buffers with the same element count, launches of declared kernels with
    /// the declared arity, temporaries allocated before use and freed once.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "launch manifest format `{}`, expected `{FORMAT}`",
                self.format
            ));
        }
        for (i, a) in self.args.iter().enumerate() {
            if checked_elements(&a.shape).is_none() {
                return Err(format!("argument {i} (`{}`): its shape overflows", a.name));
            }
        }
        for (i, b) in self.buffers.iter().enumerate() {
            if b.id != i {
                return Err(format!("buffer {i} has id {}", b.id));
            }
            if checked_elements(&b.shape).is_none() {
                return Err(format!("buffer {i}: its shape overflows"));
            }
            match b.kind {
                BufferKind::Arg { arg } => {
                    let a = self
                        .args
                        .get(arg)
                        .ok_or_else(|| format!("buffer {i}: no argument {arg}"))?;
                    if a.shape != b.shape {
                        return Err(format!("buffer {i}: shape differs from argument {arg}"));
                    }
                }
                BufferKind::View { of } => {
                    let root = self
                        .buffers
                        .get(of)
                        .filter(|_| of < i)
                        .ok_or_else(|| format!("buffer {i}: view of unknown buffer {of}"))?;
                    if root.elements() != b.elements() {
                        return Err(format!("buffer {i}: view changes the element count"));
                    }
                }
                BufferKind::Temp => {}
            }
        }
        let mut live = vec![false; self.buffers.len()];
        for (i, b) in self.buffers.iter().enumerate() {
            live[i] = !matches!(b.kind, BufferKind::Temp);
        }
        for (k, step) in self.steps.iter().enumerate() {
            match step {
                Step::Alloc { buffer } | Step::Free { buffer } => {
                    let b = self
                        .buffers
                        .get(*buffer)
                        .ok_or_else(|| format!("step {k}: unknown buffer {buffer}"))?;
                    if b.kind != BufferKind::Temp {
                        return Err(format!("step {k}: buffer {buffer} is not a temporary"));
                    }
                    let alloc = matches!(step, Step::Alloc { .. });
                    if live[*buffer] == alloc {
                        return Err(format!(
                            "step {k}: buffer {buffer} {}",
                            if alloc {
                                "allocated twice"
                            } else {
                                "freed while not allocated"
                            }
                        ));
                    }
                    live[*buffer] = alloc;
                }
                Step::Launch {
                    kernel,
                    grid,
                    block,
                    args,
                } => {
                    let spec = self
                        .kernels
                        .iter()
                        .find(|s| s.name == *kernel)
                        .ok_or_else(|| format!("step {k}: unknown kernel `{kernel}`"))?;
                    if spec.params != args.len() {
                        return Err(format!(
                            "step {k}: `{kernel}` takes {} arguments, {} given",
                            spec.params,
                            args.len()
                        ));
                    }
                    if grid.contains(&0) || block.contains(&0) {
                        return Err(format!("step {k}: empty grid or block"));
                    }
                    for a in args {
                        let root = self.root(a.buffer)?;
                        if !live[root] {
                            return Err(format!(
                                "step {k}: buffer {} used while not allocated",
                                a.buffer
                            ));
                        }
                    }
                }
                Step::Gemm { a, b, c, gemm } => {
                    if [gemm.batch, gemm.m, gemm.n, gemm.k].contains(&0) {
                        return Err(format!("step {k}: empty matrix product"));
                    }
                    let extents = gemm
                        .extents()
                        .ok_or_else(|| format!("step {k}: the product's extent overflows"))?;
                    for (id, extent) in [a, b, c].into_iter().zip(extents) {
                        let root = self.root(*id)?;
                        if !live[root] {
                            return Err(format!("step {k}: buffer {id} used while not allocated"));
                        }
                        if extent > self.buffers[*id].elements() {
                            return Err(format!(
                                "step {k}: the product reaches element {extent} of buffer {id}, which has {}",
                                self.buffers[*id].elements()
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The buffer whose memory `id` uses (itself unless it is a view).
    pub fn root(&self, id: usize) -> Result<usize, String> {
        let mut id = id;
        // Views point strictly backwards (checked above), so this ends.
        for _ in 0..=self.buffers.len() {
            match self.buffers.get(id).map(|b| &b.kind) {
                Some(BufferKind::View { of }) => id = *of,
                Some(_) => return Ok(id),
                None => return Err(format!("unknown buffer {id}")),
            }
        }
        Err(format!("buffer {id}: view cycle"))
    }

    /// Launch steps, in order.
    pub fn launches(&self) -> impl Iterator<Item = &Step> {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Launch { .. }))
    }

    /// Matrix product steps, in order.
    pub fn gemms(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| matches!(s, Step::Gemm { .. }))
    }

    /// Bytes of device memory held at once by temporaries at the worst point, and by the
    /// arguments (always held).
    pub fn peak_bytes(&self) -> (usize, usize) {
        let args = self.args.iter().fold(0usize, |sum, a| {
            sum.saturating_add(checked_elements(&a.shape).unwrap_or(usize::MAX))
        });
        let (mut now, mut peak) = (0usize, 0usize);
        for step in &self.steps {
            match step {
                Step::Alloc { buffer } => {
                    now = now.saturating_add(self.buffers.get(*buffer).map_or(0, |b| b.elements()));
                    peak = peak.max(now);
                }
                Step::Free { buffer } => {
                    now = now.saturating_sub(self.buffers.get(*buffer).map_or(0, |b| b.elements()));
                }
                Step::Launch { .. } | Step::Gemm { .. } => {}
            }
        }
        (peak.saturating_mul(4), args.saturating_mul(4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_argument_is_a_file_or_a_generator() {
        let args: Vec<Option<ArgSource>> =
            serde_json::from_str(r#"["a.f32", {"seed": 3, "lo": -0.25, "hi": 0.25}, null]"#)
                .expect("parses");
        assert_eq!(args[0], Some(ArgSource::File("a.f32".into())));
        assert_eq!(
            args[1],
            Some(ArgSource::Uniform {
                seed: 3,
                lo: -0.25,
                hi: 0.25
            })
        );
        assert_eq!(args[2], None);
        let again: Vec<Option<ArgSource>> =
            serde_json::from_str(&serde_json::to_string(&args).expect("writes")).expect("parses");
        assert_eq!(again, args);
    }

    /// [`tiny`] with a product `C[1×n] = A[1×2]·B[2×n]`, A and B in buffer 0, C in buffer `c`.
    fn with_product(n: usize, c: usize) -> LaunchManifest {
        let mut m = tiny();
        m.steps.push(Step::Gemm {
            a: 0,
            b: 0,
            c,
            gemm: Gemm::single(1, n, 2),
        });
        m
    }

    #[test]
    fn the_abi_arguments_read_back_as_the_product() {
        let g = Gemm {
            batch: 960,
            trans_a: true,
            stride_b: 1152,
            stride_c: 256,
            accumulate: true,
            ..Gemm::single(4, 64, 18)
        };
        assert_eq!(Gemm::from_abi(g.to_abi()), Ok(g));
    }

    #[test]
    fn a_product_must_stay_inside_live_buffers() {
        // B is k × n = 2 × 3 = the whole of buffer 0; C is 1 × 3 inside buffer 1 (6 values).
        assert_eq!(with_product(3, 1).check(), Ok(()));
        // n = 4 reads 2 × 4 = 8 values of a 6-value buffer.
        let e = with_product(4, 1).check().err().unwrap_or_default();
        assert!(e.contains("reaches element 8 of buffer 0"), "{e}");
        // C in the temporary after it was freed.
        let e = with_product(3, 2).check().err().unwrap_or_default();
        assert!(e.contains("not allocated"), "{e}");
        let mut m = with_product(3, 1);
        if let Some(Step::Gemm { gemm, .. }) = m.steps.last_mut() {
            gemm.k = 0;
        }
        assert!(m.check().is_err_and(|e| e.contains("empty")));
    }

    #[test]
    fn products_and_shapes_that_overflow_are_errors_not_panics() {
        let mut m = tiny();
        m.steps.push(Step::Gemm {
            a: 0,
            b: 0,
            c: 0,
            gemm: Gemm {
                batch: usize::MAX,
                m: 1,
                n: 1,
                k: 1,
                trans_a: false,
                trans_b: false,
                stride_a: 2,
                stride_b: 0,
                stride_c: 0,
                accumulate: false,
            },
        });
        assert!(m.check().is_err_and(|e| e.contains("overflows")));
        let mut m = tiny();
        m.buffers[0].shape = vec![usize::MAX, 3];
        m.args[0].shape = vec![usize::MAX, 3];
        assert!(m.check().is_err_and(|e| e.contains("overflows")));
        let _ = m.peak_bytes();
    }

    #[test]
    fn a_check_case_without_training_fields_reads_as_forward_only() {
        let case: CheckCase = serde_json::from_str(
            r#"{"name": "m", "kind": "check", "ptx": "m.ptx", "manifest": "m.launch.json",
                "args": [null], "expected": ["m.want0.f32"], "reference": "r",
                "tolerance": 1e-4, "iters": 1}"#,
        )
        .expect("parses");
        assert!(case.backward_manifest.is_none());
        assert!(case.backward_args.is_empty() && case.backward_stride.is_empty());
        assert_eq!(case.grad_tolerance, None);
    }

    #[test]
    fn generated_values_are_in_range_deterministic_and_constant_when_lo_is_hi() {
        let v = uniform_f32(1000, 9, -0.5, 0.5);
        assert!(v.iter().all(|x| (-0.5..0.5).contains(x)));
        assert_eq!(v, uniform_f32(1000, 9, -0.5, 0.5));
        assert_ne!(v, uniform_f32(1000, 10, -0.5, 0.5));
        let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / 1000.0;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!(uniform_f32(5, 1, 0.1, 0.1).iter().all(|x| *x == 0.1));
    }

    fn tiny() -> LaunchManifest {
        LaunchManifest {
            format: FORMAT.into(),
            model: "m".into(),
            chip: "sm_90".into(),
            batch: 1,
            ptx: "m.ptx".into(),
            args: vec![
                ArgSpec {
                    name: "x".into(),
                    role: "input".into(),
                    shape: vec![2, 3],
                },
                ArgSpec {
                    name: "y".into(),
                    role: "output".into(),
                    shape: vec![6],
                },
            ],
            buffers: vec![
                BufferSpec {
                    id: 0,
                    shape: vec![2, 3],
                    kind: BufferKind::Arg { arg: 0 },
                },
                BufferSpec {
                    id: 1,
                    shape: vec![6],
                    kind: BufferKind::Arg { arg: 1 },
                },
                BufferSpec {
                    id: 2,
                    shape: vec![2, 3],
                    kind: BufferKind::Temp,
                },
                BufferSpec {
                    id: 3,
                    shape: vec![6],
                    kind: BufferKind::View { of: 2 },
                },
            ],
            kernels: vec![KernelSpec {
                name: "k".into(),
                params: 2,
            }],
            steps: vec![
                Step::Alloc { buffer: 2 },
                Step::Launch {
                    kernel: "k".into(),
                    grid: [1, 1, 1],
                    block: [256, 1, 1],
                    args: vec![
                        LaunchArg {
                            buffer: 3,
                            shape: vec![6],
                        },
                        LaunchArg {
                            buffer: 1,
                            shape: vec![6],
                        },
                    ],
                },
                Step::Free { buffer: 2 },
            ],
        }
    }

    #[test]
    fn round_trips_and_checks() {
        let m = tiny();
        let text = m.to_json();
        assert!(text.contains("\"op\": \"launch\""), "{text}");
        assert!(text.contains("\"kind\": \"view\""), "{text}");
        assert_eq!(LaunchManifest::from_json(&text), Ok(m.clone()));
        assert_eq!(m.root(3), Ok(2));
        assert_eq!(m.peak_bytes(), (24, 48));
    }

    #[test]
    fn rejects_inconsistent_manifests() {
        let mut m = tiny();
        m.steps.swap(0, 1);
        assert!(m.check().is_err_and(|e| e.contains("not allocated")));
        let mut m = tiny();
        m.kernels[0].params = 3;
        assert!(m.check().is_err_and(|e| e.contains("takes 3")));
        let mut m = tiny();
        m.buffers[3].shape = vec![7];
        assert!(m.check().is_err_and(|e| e.contains("element count")));
        assert!(LaunchManifest::from_json("{").is_err());
    }
}

/// Where the values of one argument of a bundle case come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ArgSource {
    /// A raw little-endian f32 file, relative to the bundle.
    File(String),
    /// [`uniform_f32`]`(n, seed, lo, hi)`, made again on the GPU machine: large parameters
    /// need not travel with the bundle (`lo == hi` gives a constant).
    Uniform { seed: u64, lo: f32, hi: f32 },
}

/// `n` deterministic values in `[lo, hi)` (a 64-bit LCG): the same on every machine, so a
/// bundle can name values instead of carrying them.
pub fn uniform_f32(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let (lo, hi) = (f64::from(lo), f64::from(hi));
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            (lo + (hi - lo) * u) as f32
        })
        .collect()
}

/// One case of a GPU check bundle (`cases.json`, written by snnc's `gpu_prepare` example on
/// any machine, replayed by the runtime's `gpu_check` example on a GPU machine).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckCase {
    pub name: String,
    /// `check` (compare against `expected`), `time` (run `iters` times), or their training
    /// forms `train` and `train_time` (`forward_train`, then `backward`).
    pub kind: String,
    /// Paths relative to the bundle.
    pub ptx: String,
    pub manifest: String,
    /// Per forward argument: its values, or none (outputs; random event frames for a timing
    /// case's inputs).
    pub args: Vec<Option<ArgSource>>,
    /// Per forward argument: the reference values (outputs and updated state) for `check`.
    pub expected: Vec<Option<String>>,
    /// Where the reference comes from, for the report.
    pub reference: String,
    pub tolerance: f64,
    pub iters: usize,
    /// Training cases (`train`: check, `train_time`: timing): `manifest` is `forward_train`'s,
    /// this is `backward`'s (the same PTX).
    #[serde(default)]
    pub backward_manifest: Option<String>,
    /// Per backward argument: the output gradients' values (arguments shared with the
    /// forward are the forward's buffers).
    #[serde(default)]
    pub backward_args: Vec<Option<ArgSource>>,
    /// Per backward argument: the reference gradients for `train`.
    #[serde(default)]
    pub backward_expected: Vec<Option<String>>,
    /// Per backward argument: the reference file holds every `stride`-th value only (large
    /// gradients, so that a ResNet's fit the bundle); absent or 1: every value.
    #[serde(default)]
    pub backward_stride: Vec<usize>,
    /// The tolerance for gradients (`tolerance` when absent).
    #[serde(default)]
    pub grad_tolerance: Option<f64>,
    /// Training cases: the optimiser step's manifest (the same PTX), run after the backward
    /// (`train`: checked against the host's Adam; `train_time`: part of the timed step).
    #[serde(default)]
    pub optimizer_manifest: Option<String>,
    /// Training checks of a network where f32 rounding flips spikes (the reference is exact
    /// only up to its first spiking layer): per forward argument, the reference spike count
    /// of a saved spike train, which the device's must match within
    /// [`SPIKE_COUNT_TOLERANCE`].
    #[serde(default)]
    pub expected_spikes: Vec<Option<f64>>,
}

/// Relative difference allowed between a layer's spike count and the reference's when f32
/// rounding flips some spikes. A flip is a membrane within rounding of its threshold; it
/// perturbs every membrane it feeds, so flips cascade down the layers: the Att-Res-SNN-18 at
/// T = 1, B = 2 (a few thousand spikes per layer) differed by up to 5 % in its deepest
/// layers on an H200. A kernel error moves firing rates by far more; each op's exact results
/// are checked on the small models, which flip nothing.
pub const SPIKE_COUNT_TOLERANCE: f64 = 0.1;
