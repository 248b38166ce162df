//! Parallel loops: `omp.parallel { omp.wsloop { omp.loop_nest } }` (what
//! `convert-scf-to-openmp` makes of `scf.parallel`) without an OpenMP runtime.
//!
//! A parallel loop at the top level of a function is *outlined*: its body becomes a function
//! `body(ctx, start, end)` of its own that runs iterations `start..end` of the loop's leading
//! dimensions (flattened), and the function calls the runtime's `snn_parallel_for(body, ctx, n)`
//! with the values the body uses (pointers, sizes, loop-invariant scalars and vectors) stored in
//! a frame slot that `ctx` points to. The runtime splits `0..n` into contiguous blocks over its
//! threads. Constants are rebuilt inside the body rather than passed, so that Cranelift still
//! sees them (loop bounds, strides). Parallel loops nested inside an outlined body, and every
//! parallel loop when there is nothing to outline into, run as plain loops.

use super::{BackendError, FnTranslator, Val, key, op_name, reverse_post_order};
use cranelift_codegen::ir::{
    self, AbiParam, BlockArg, InstBuilder, MemFlagsData, Signature, StackSlotData, StackSlotKind,
    condcodes::IntCC, types,
};
use cranelift_module::{FuncId, Linkage, Module as ClifModule};
use melior::ir::{
    BlockLike, BlockRef, RegionLike, Value,
    operation::{OperationLike, OperationRef, OperationResult},
};
use std::collections::HashSet;

/// The runtime function that runs an outlined body over `0..n` on its threads.
const PARALLEL_FOR: &str = "snn_parallel_for";

/// The leading dimensions of a nest are split over threads until they have at least this many
/// iterations together (an outlined body recovers their indices with a division each).
const MIN_SPLIT_ITERATIONS: i64 = 64;

/// One outlined parallel loop: translated, after the module's functions, into the function `id`.
pub(super) struct Outlined<'c, 'm> {
    pub sym: String,
    pub id: FuncId,
    /// The `omp.parallel`.
    pub parallel: OperationRef<'c, 'm>,
    captures: Vec<Capture<'c, 'm>>,
    /// How many leading dimensions of the nest the runtime's `0..n` flattens.
    split: usize,
}

/// A value defined outside an outlined loop and used inside it.
enum Capture<'c, 'm> {
    /// A constant: translated again in the body.
    Rebuilt(OperationRef<'c, 'm>),
    /// Stored by the caller, loaded by the body: the value (`key`) and its scalars' types and
    /// offsets in the frame slot, in the shape of the translated value.
    Passed { key: usize, layout: Layout },
}

/// Where a captured value's scalars live in the frame slot.
#[derive(Clone)]
enum Layout {
    Scalar(ir::Type, i32),
    Aggregate(Vec<Layout>),
}

/// `body(ctx, start, end)`.
pub(super) fn body_signature<M: ClifModule>(module: &M) -> Signature {
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(ptr));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig
}

/// The first op of a single-block region of `op`, checked to be `name`, and the block's ops.
fn only_child<'c, 'm>(
    op: &OperationRef<'c, 'm>,
    name: &str,
) -> Result<OperationRef<'c, 'm>, BackendError> {
    let first = op
        .region(0)
        .ok()
        .and_then(|r| r.first_block())
        .and_then(|b| b.first_operation());
    match first {
        Some(child) if op_name(&child) == name => Ok(child),
        _ => Err(BackendError::new(format!(
            "`{}` must hold exactly one `{name}` (convert-scf-to-openmp's form)",
            op_name(op)
        ))),
    }
}

/// The `omp.loop_nest` of an `omp.parallel { omp.wsloop { ... } }`.
fn loop_nest_of<'c, 'm>(
    parallel: &OperationRef<'c, 'm>,
) -> Result<OperationRef<'c, 'm>, BackendError> {
    let wsloop = only_child(parallel, "omp.wsloop")?;
    if wsloop.next_in_block().map(|o| op_name(&o)).as_deref() != Some("omp.terminator") {
        return Err(BackendError::new(
            "`omp.parallel` must hold only an `omp.wsloop` and its terminator",
        ));
    }
    let nest = only_child(&wsloop, "omp.loop_nest")?;
    if nest.attribute("loop_inclusive").is_ok() {
        return Err(BackendError::new(
            "`omp.loop_nest` with inclusive upper bounds is not supported",
        ));
    }
    Ok(nest)
}

/// Every op nested in `op` (not `op` itself), in order.
fn nested_ops<'c, 'm>(op: &OperationRef<'c, 'm>, out: &mut Vec<OperationRef<'c, 'm>>) {
    for region in op.regions() {
        let mut block = region.first_block();
        while let Some(b) = block {
            let mut inner = b.first_operation();
            while let Some(o) = inner {
                inner = o.next_in_block();
                out.push(o);
                nested_ops(&o, out);
            }
            block = b.next_in_region();
        }
    }
}

/// The values used inside `op` but defined outside it, in order of first use.
fn free_values<'c, 'm>(op: &OperationRef<'c, 'm>) -> Vec<Value<'c, 'm>> {
    let mut ops = vec![*op];
    nested_ops(op, &mut ops);
    let mut defined = HashSet::new();
    for o in &ops {
        for r in 0..o.result_count() {
            if let Ok(v) = o.result(r) {
                defined.insert(key(v));
            }
        }
        for region in o.regions() {
            let mut block = region.first_block();
            while let Some(b) = block {
                for a in 0..b.argument_count() {
                    if let Ok(arg) = b.argument(a) {
                        defined.insert(key(arg));
                    }
                }
                block = b.next_in_region();
            }
        }
    }
    let mut seen = HashSet::new();
    let mut free = Vec::new();
    for o in &ops {
        for i in 0..o.operand_count() {
            if let Ok(v) = o.operand(i)
                && !defined.contains(&key(v))
                && seen.insert(key(v))
            {
                free.push(v);
            }
        }
    }
    free
}

/// The op defining `v` when it is a constant that a body can translate again.
fn constant_def<'c, 'm>(v: Value<'c, 'm>) -> Option<OperationRef<'c, 'm>> {
    let def = OperationResult::try_from(v).ok()?.owner();
    matches!(
        op_name(&def).as_str(),
        "llvm.mlir.constant" | "llvm.mlir.zero" | "llvm.mlir.undef" | "llvm.mlir.poison"
    )
    .then_some(def)
}

/// A counted loop under construction: its induction variable, header and latch blocks.
struct Loop {
    iv: ir::Value,
    header: ir::Block,
    latch: ir::Block,
}

/// Lower bounds, upper bounds and steps, one per dimension, as `(lb, ub, step)`.
type Bounds = Vec<(ir::Value, ir::Value, ir::Value)>;

impl<'c, 'm, M: ClifModule> FnTranslator<'_, '_, 'c, 'm, M> {
    /// `omp.*` ops: a parallel loop (outlined, or inline inside an outlined body) and the
    /// terminator of its body.
    pub(super) fn parallel_op(
        &mut self,
        op: &OperationRef<'c, 'm>,
        name: &str,
    ) -> Result<(), BackendError> {
        match name {
            "parallel" if self.inline_parallel => {
                let nest = loop_nest_of(op).map_err(|e| self.err(e))?;
                let bounds = self.bounds(&nest)?;
                let after = self.b.create_block();
                self.nest_loops(&bounds, Vec::new(), &nest, after)?;
                self.b.switch_to_block(after);
                Ok(())
            }
            "parallel" => self.outline(op),
            "yield" => {
                let latch = *self
                    .yield_to
                    .last()
                    .ok_or_else(|| self.err("`omp.yield` outside a parallel loop"))?;
                self.b.ins().jump(latch, &[]);
                Ok(())
            }
            _ => Err(self.err(format!(
                "the CPU backend does not support `omp.{name}` outside the parallel-loop form"
            ))),
        }
    }

    /// The `(lb, ub, step)` of each dimension of `nest`, from its operands.
    fn bounds(&self, nest: &OperationRef<'c, 'm>) -> Result<Bounds, BackendError> {
        let n = self.nest_rank(nest)?;
        (0..n)
            .map(|d| {
                Ok((
                    self.operand(nest, d)?,
                    self.operand(nest, n + d)?,
                    self.operand(nest, 2 * n + d)?,
                ))
            })
            .collect()
    }

    fn nest_rank(&self, nest: &OperationRef<'c, 'm>) -> Result<usize, BackendError> {
        let entry = nest
            .region(0)
            .ok()
            .and_then(|r| r.first_block())
            .ok_or_else(|| self.err("`omp.loop_nest` without a body"))?;
        let n = entry.argument_count();
        if nest.operand_count() != 3 * n {
            return Err(self.err("`omp.loop_nest` operands do not match its induction variables"));
        }
        Ok(n)
    }

    /// Iterations of the dimension `(lb, ub, step)`: `max(0, ceil((ub - lb) / step))` (steps are
    /// positive in this form).
    fn trip_count(&mut self, (lb, ub, step): (ir::Value, ir::Value, ir::Value)) -> ir::Value {
        let span = self.b.ins().isub(ub, lb);
        let zero = self.b.ins().iconst(types::I64, 0);
        let span = self.b.ins().smax(span, zero);
        let one = self.b.ins().iconst(types::I64, 1);
        let up = self.b.ins().isub(step, one);
        let padded = self.b.ins().iadd(span, up);
        self.b.ins().udiv(padded, step)
    }

    /// Loops over `bounds` around the nest's body; `ivs` are the outer dimensions' induction
    /// variables. Control reaches `exit` when the loops are done.
    fn nest_loops(
        &mut self,
        bounds: &[(ir::Value, ir::Value, ir::Value)],
        ivs: Vec<ir::Value>,
        nest: &OperationRef<'c, 'm>,
        exit: ir::Block,
    ) -> Result<(), BackendError> {
        let Some((&(lb, ub, step), inner)) = bounds.split_first() else {
            return self.nest_body(nest, &ivs, exit);
        };
        let l = self.open_loop(lb, ub, exit);
        let mut ivs = ivs;
        ivs.push(l.iv);
        self.nest_loops(inner, ivs, nest, l.latch)?;
        self.close_loop(&l, step);
        Ok(())
    }

    /// Starts `for iv in (start..end)` (signed, the step added by [`Self::close_loop`]),
    /// leaving to `exit` when done; continues in the loop's body, which must end in the
    /// returned latch block.
    fn open_loop(&mut self, start: ir::Value, end: ir::Value, exit: ir::Block) -> Loop {
        let header = self.b.create_block();
        let iv = self.b.append_block_param(header, types::I64);
        let body = self.b.create_block();
        let latch = self.b.create_block();
        self.b.ins().jump(header, &[BlockArg::Value(start)]);
        self.b.switch_to_block(header);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, iv, end);
        self.b.ins().brif(more, body, &[], exit, &[]);
        self.b.switch_to_block(body);
        Loop { iv, header, latch }
    }

    /// The latch of a loop from [`Self::open_loop`]: `iv += step`, back to its header.
    fn close_loop(&mut self, l: &Loop, step: ir::Value) {
        self.b.switch_to_block(l.latch);
        let next = self.b.ins().iadd(l.iv, step);
        self.b.ins().jump(l.header, &[BlockArg::Value(next)]);
    }

    /// The nest's body region for the induction variables `ivs`; its `omp.yield` continues at
    /// `latch`.
    fn nest_body(
        &mut self,
        nest: &OperationRef<'c, 'm>,
        ivs: &[ir::Value],
        latch: ir::Block,
    ) -> Result<(), BackendError> {
        let region = nest.region(0).map_err(|e| self.err(e))?;
        let entry: BlockRef<'c, 'm> = region
            .first_block()
            .ok_or_else(|| self.err("`omp.loop_nest` without a body"))?;
        let order = reverse_post_order(entry);
        self.create_blocks(&order)?;
        let target = self.block_of(&entry)?;
        let args: Vec<BlockArg> = ivs.iter().copied().map(BlockArg::Value).collect();
        self.b.ins().jump(target, &args);
        self.yield_to.push(latch);
        let done = self.translate_blocks(&order);
        self.yield_to.pop();
        done
    }

    /// Outlines the parallel loop `parallel` and calls the runtime to run it.
    fn outline(&mut self, parallel: &OperationRef<'c, 'm>) -> Result<(), BackendError> {
        let nest = loop_nest_of(parallel).map_err(|e| self.err(e))?;
        let bounds = self.bounds(&nest)?;

        // The captures, stored into one frame slot.
        let mut captures = Vec::new();
        let mut stores = Vec::new();
        let mut size = 0u32;
        for v in free_values(parallel) {
            if let Some(def) = constant_def(v) {
                captures.push(Capture::Rebuilt(def));
                continue;
            }
            let val = self.get(v)?;
            let layout = self.place(&val, &mut size, &mut stores)?;
            captures.push(Capture::Passed {
                key: key(v),
                layout,
            });
        }
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            size.max(16),
            4,
        ));
        let ptr = self.ptr_ty();
        let ctx = self.b.ins().stack_addr(ptr, slot, 0);
        for (x, offset) in stores {
            // Every scalar sits at a multiple of its size (vectors of 16) in a 16-aligned slot.
            self.b.ins().store(MemFlagsData::trusted(), x, ctx, offset);
        }

        // The leading dimensions the runtime splits: enough iterations to share out, known
        // from the constant bounds (one dimension when they are not constant).
        let rank = self.nest_rank(&nest)?;
        let mut split = 1;
        let mut known = self.constant_trips(&nest, 0);
        while split < rank
            && let Some(t) = known
            && t < MIN_SPLIT_ITERATIONS
        {
            known = self.constant_trips(&nest, split).map(|next| t * next);
            split += 1;
        }
        let mut n = self.b.ins().iconst(types::I64, 1);
        for &dim in &bounds[..split] {
            let trips = self.trip_count(dim);
            n = self.b.ins().imul(n, trips);
        }

        // The node the loop computes (its location) in the name, so profiles say which op a
        // loop is: `<function>__loop<k>_<node>`.
        let node = loc_name(&parallel.location().to_string());
        let sym = format!("{}__loop{}{node}", self.sym, self.outlined.len());
        let sig = body_signature(&*self.module);
        let id = self
            .module
            .declare_function(&sym, Linkage::Local, &sig)
            .map_err(|e| self.err(e))?;
        let body_ref = self.module.declare_func_in_func(id, self.b.func);
        let body = self.b.ins().func_addr(ptr, body_ref);
        let run = self.parallel_for()?;
        self.b.ins().call(run, &[body, ctx, n]);
        self.outlined.push(Outlined {
            sym,
            id,
            parallel: *parallel,
            captures,
            split,
        });
        Ok(())
    }

    /// Iterations of dimension `d` of `nest` when its bounds are constants.
    fn constant_trips(&self, nest: &OperationRef<'c, 'm>, d: usize) -> Option<i64> {
        let n = nest.region(0).ok()?.first_block()?.argument_count();
        let c = |i: usize| {
            nest.operand(i)
                .ok()
                .and_then(|v| self.consts.get(&key(v)).copied())
        };
        let (lb, ub, step) = (c(d)?, c(n + d)?, c(2 * n + d)?);
        (step > 0).then(|| ((ub - lb).max(0) + step - 1) / step)
    }

    /// Assigns frame-slot offsets to `val`'s scalars (naturally aligned), recording the stores.
    fn place(
        &self,
        val: &Val,
        size: &mut u32,
        stores: &mut Vec<(ir::Value, i32)>,
    ) -> Result<Layout, BackendError> {
        match val {
            Val::S(x) => {
                let ty = self.b.func.dfg.value_type(*x);
                let bytes = ty.bytes().max(1);
                let offset = size.div_ceil(bytes.min(16)) * bytes.min(16);
                *size = offset + bytes;
                let offset = i32::try_from(offset)
                    .map_err(|_| self.err("a parallel loop captures too many values"))?;
                stores.push((*x, offset));
                Ok(Layout::Scalar(ty, offset))
            }
            Val::Agg(fields) => Ok(Layout::Aggregate(
                fields
                    .iter()
                    .map(|f| self.place(f, size, stores))
                    .collect::<Result<_, _>>()?,
            )),
        }
    }

    /// The imported `snn_parallel_for(body, ctx, n)`.
    fn parallel_for(&mut self) -> Result<ir::FuncRef, BackendError> {
        if let Some(f) = self.func_refs.get(PARALLEL_FOR) {
            return Ok(*f);
        }
        let ptr = self.ptr_ty();
        let mut sig = self.module.make_signature();
        sig.params.push(AbiParam::new(ptr));
        sig.params.push(AbiParam::new(ptr));
        sig.params.push(AbiParam::new(types::I64));
        let id = self
            .module
            .declare_function(PARALLEL_FOR, Linkage::Import, &sig)
            .map_err(|e| self.err(e))?;
        let f = self.module.declare_func_in_func(id, self.b.func);
        self.func_refs.insert(PARALLEL_FOR.to_string(), f);
        Ok(f)
    }

    /// The body of the outlined loop `index`: loads the captures, then runs the flattened
    /// iterations `start..end` of the split dimensions, each over the whole remaining nest.
    pub(super) fn loop_body(&mut self, index: usize) -> Result<(), BackendError> {
        let (parallel, split) = {
            let o = &self.outlined[index];
            (o.parallel, o.split)
        };
        let entry = self.b.create_block();
        self.b.append_block_params_for_function_params(entry);
        self.b.switch_to_block(entry);
        let params = self.b.block_params(entry).to_vec();
        let (ctx, start, end) = (params[0], params[1], params[2]);
        let captures = std::mem::take(&mut self.outlined[index].captures);
        for c in &captures {
            match c {
                Capture::Rebuilt(def) => self.op(def)?,
                Capture::Passed { key, layout } => {
                    let v = self.load_layout(ctx, layout);
                    self.vals.insert(*key, v);
                }
            }
        }
        self.outlined[index].captures = captures;

        let nest = loop_nest_of(&parallel).map_err(|e| self.err(e))?;
        let bounds = self.bounds(&nest)?;
        let trips: Vec<ir::Value> = bounds[..split]
            .iter()
            .map(|&dim| self.trip_count(dim))
            .collect();
        let one = self.b.ins().iconst(types::I64, 1);
        let exit = self.b.create_block();
        let l = self.open_loop(start, end, exit);
        let flat = l.iv;
        // Row-major: the last split dimension varies fastest.
        let mut ivs = vec![flat; split];
        let mut rest = flat;
        for d in (0..split).rev() {
            let position = if d == 0 {
                rest
            } else {
                let i = self.b.ins().urem(rest, trips[d]);
                rest = self.b.ins().udiv(rest, trips[d]);
                i
            };
            let (lb, _, step) = bounds[d];
            let offset = self.b.ins().imul(position, step);
            ivs[d] = self.b.ins().iadd(lb, offset);
        }
        self.nest_loops(&bounds[split..], ivs, &nest, l.latch)?;
        self.close_loop(&l, one);
        self.b.switch_to_block(exit);
        self.b.ins().return_(&[]);
        self.b.seal_all_blocks();
        Ok(())
    }

    /// A captured value, loaded from the frame slot at `ctx`.
    fn load_layout(&mut self, ctx: ir::Value, layout: &Layout) -> Val {
        match layout {
            Layout::Scalar(ty, offset) => {
                let flags = if ty.is_vector() {
                    MemFlagsData::new().with_notrap()
                } else {
                    MemFlagsData::trusted()
                };
                Val::S(self.b.ins().load(*ty, flags, ctx, *offset))
            }
            Layout::Aggregate(fields) => {
                Val::Agg(fields.iter().map(|f| self.load_layout(ctx, f)).collect())
            }
        }
    }
}

/// `_<name>` for the first quoted name of an MLIR location (`loc("bn0")` → `_bn0`), with
/// anything but ASCII letters, digits and `_` dropped; empty without one.
fn loc_name(loc: &str) -> String {
    let name: String = loc
        .split('"')
        .nth(1)
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if name.is_empty() {
        name
    } else {
        format!("_{name}")
    }
}

#[cfg(test)]
mod loc_tests {
    use super::loc_name;

    #[test]
    fn loop_names_carry_the_node() {
        assert_eq!(loc_name("loc(\"bn0\")"), "_bn0");
        assert_eq!(loc_name("loc(\"ta.fc-1\"(\"x.snn\":3:4))"), "_tafc1");
        assert_eq!(loc_name("loc(unknown)"), "");
    }
}
