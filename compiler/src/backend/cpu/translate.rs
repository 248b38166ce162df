//! Translation of an LLVM-dialect MLIR module (the output of `mlir::LLVM_PIPELINE`) into
//! Cranelift IR: one Cranelift function per `llvm.func`, declared and defined in any module.
//!
//! Values are mapped one to one (MLIR blocks → Cranelift blocks with parameters, emitted in
//! reverse post-order so that definitions precede uses; `seal_all_blocks` at the end). `i1`
//! lives in `I8` (0 or 1), pointers in the pointer-sized integer. Aggregates (`struct`/`array`
//! values from `insertvalue`/`extractvalue`) exist only at translation time as vectors of
//! scalars. Transcendental intrinsics become calls to libm (`expf`, `tanhf`, ...), imported.
//!
//! Parallel loops (`omp.parallel` from `LLVM_PIPELINE_THREADED`) are outlined into functions of
//! their own and run through the runtime's `snn_parallel_for` (see [`parallel`]).

use super::BackendError;
use cranelift_codegen::ir::{
    self, AbiParam, BlockArg, InstBuilder, MemFlagsData, Signature, StackSlotData, StackSlotKind,
    TrapCode, UserFuncName,
    condcodes::{FloatCC, IntCC},
    types,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{FuncId, Linkage, Module as ClifModule, ModuleError};
use melior::ir::{
    BlockLike, BlockRef, Module, RegionLike, ValueLike,
    attribute::{
        Attribute, DenseI32ArrayAttribute, DenseI64ArrayAttribute, FlatSymbolRefAttribute,
        FloatAttribute, IntegerAttribute, StringAttribute, TypeAttribute,
    },
    operation::{OperationLike, OperationRef},
};
use parallel::Outlined;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

mod parallel;

/// What `translate_module` produced: the defined functions and, when asked, their CLIF text.
#[derive(Debug, Default)]
pub struct Translation {
    /// Every function defined in the target module (name, id), in module order.
    pub defined: Vec<(String, FuncId)>,
    /// Functions only declared in the MLIR module (imported: `malloc`, `free`, ...).
    pub imported: Vec<String>,
    /// The CLIF of every defined function before Cranelift's optimisations (when requested).
    pub clif: String,
}

/// Declares every `llvm.func` of `mlir` in `target` and defines those with a body. Declared-only
/// functions (`malloc`, `free`) are imports; defined ones are exported unless marked private.
pub fn translate_module<M: ClifModule>(
    mlir: &Module,
    target: &mut M,
    capture_clif: bool,
) -> Result<Translation, BackendError> {
    let mut funcs: HashMap<String, Callee> = HashMap::new();
    let mut bodies = Vec::new();
    let mut out = Translation::default();
    let mut op = mlir.body().first_operation();
    while let Some(f) = op {
        op = f.next_in_block();
        let name = op_name(&f);
        if name != "llvm.func" {
            return Err(BackendError::new(format!(
                "the CPU backend does not support the top-level op `{name}` (only `llvm.func`)"
            )));
        }
        let sym = string_attr(&f, "sym_name")?;
        let fty = type_attr(&f, "function_type")?;
        let LTy::Func {
            ret,
            params,
            vararg,
        } = parse_type(&fty)?
        else {
            return Err(BackendError::new(format!(
                "@{sym}: `{fty}` is not a function type"
            )));
        };
        if vararg {
            return Err(BackendError::new(format!(
                "@{sym}: variadic functions are not supported"
            )));
        }
        let ptr = target.target_config().pointer_type();
        let mut sig = target.make_signature();
        for p in &params {
            sig.params.push(abi_param(clif_type(p, ptr, &sym)?, p));
        }
        if *ret != LTy::Void {
            sig.returns
                .push(abi_param(clif_type(&ret, ptr, &sym)?, &ret));
        }
        let has_body = f.region(0).ok().and_then(|r| r.first_block()).is_some();
        let linkage = if !has_body {
            Linkage::Import
        } else if f
            .attribute("linkage")
            .is_ok_and(|a| a.to_string().contains("private") || a.to_string().contains("internal"))
        {
            Linkage::Local
        } else {
            Linkage::Export
        };
        let id = target
            .declare_function(&sym, linkage, &sig)
            .map_err(|e| module_error(&sym, e, None))?;
        funcs.insert(
            sym.clone(),
            Callee {
                id,
                ret: (*ret).clone(),
            },
        );
        if has_body {
            bodies.push((sym, id, sig, f));
        } else {
            out.imported.push(sym);
        }
    }

    let mut ctx = target.make_context();
    let mut fbc = FunctionBuilderContext::new();
    // Functions first, then the parallel loops they outlined (which outline nothing more:
    // nested parallel loops run inline).
    let mut outlined: Vec<Outlined> = Vec::new();
    let mut next_outlined = 0;
    let mut work = bodies.into_iter();
    loop {
        let (sym, id, f, loop_body) = if let Some((sym, id, sig, f)) = work.next() {
            ctx.func.signature = sig;
            (sym, id, f, None)
        } else if let Some(o) = outlined.get(next_outlined) {
            next_outlined += 1;
            ctx.func.signature = parallel::body_signature(target);
            (o.sym.clone(), o.id, o.parallel, Some(next_outlined - 1))
        } else {
            break;
        };
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        let cfg = target.target_config();
        {
            let builder = FunctionBuilder::new(&mut ctx.func, &mut fbc);
            let mut fx = FnTranslator {
                b: builder,
                module: &mut *target,
                funcs: &funcs,
                sym: &sym,
                vals: HashMap::new(),
                blocks: HashMap::new(),
                consts: HashMap::new(),
                func_refs: HashMap::new(),
                types: HashMap::new(),
                outlined: &mut outlined,
                yield_to: Vec::new(),
                inline_parallel: loop_body.is_some(),
            };
            match loop_body {
                None => fx.function(&f)?,
                Some(i) => fx.loop_body(i)?,
            }
            // `finalize` consumes the builder.
            fx.b.finalize(cfg);
        }
        if capture_clif {
            let _ = writeln!(out.clif, "; @{sym}\n{}", ctx.func.display());
        }
        target
            .define_function(id, &mut ctx)
            .map_err(|e| module_error(&sym, e, Some(&ctx.func)))?;
        target.clear_context(&mut ctx);
        out.defined.push((sym, id));
    }
    Ok(out)
}

/// Defines `packed(args: *const *mut f32)` that loads `n_args` pointers and calls `callee`
/// with them: a fixed-arity entry point for callers that cannot name the forward's arity.
pub fn define_packed_entry<M: ClifModule>(
    target: &mut M,
    name: &str,
    callee: FuncId,
    n_args: usize,
    linkage: Linkage,
) -> Result<FuncId, BackendError> {
    let ptr = target.target_config().pointer_type();
    let mut sig = target.make_signature();
    sig.params.push(AbiParam::new(ptr));
    let id = target
        .declare_function(name, linkage, &sig)
        .map_err(|e| module_error(name, e, None))?;
    let mut ctx = target.make_context();
    ctx.func.signature = sig;
    ctx.func.name = UserFuncName::user(0, id.as_u32());
    let mut fbc = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fbc);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let base = b.block_params(entry)[0];
        let mut args = Vec::with_capacity(n_args);
        for i in 0..n_args {
            let offset = i32::try_from(i * ptr.bytes() as usize)
                .map_err(|_| BackendError::new(format!("{name}: too many arguments")))?;
            args.push(b.ins().load(ptr, MemFlagsData::trusted(), base, offset));
        }
        let fref = target.declare_func_in_func(callee, b.func);
        b.ins().call(fref, &args);
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(target.target_config());
    }
    target
        .define_function(id, &mut ctx)
        .map_err(|e| module_error(name, e, Some(&ctx.func)))?;
    Ok(id)
}

fn module_error(sym: &str, e: ModuleError, func: Option<&ir::Function>) -> BackendError {
    let detail = match (e, func) {
        (ModuleError::Compilation(err), Some(func)) => {
            cranelift_codegen::print_errors::pretty_error(func, err)
        }
        (e, _) => e.to_string(),
    };
    BackendError::new(format!("Cranelift rejected @{sym}: {detail}"))
}

fn abi_param(ty: ir::Type, lty: &LTy) -> AbiParam {
    // C callers expect narrow integers extended to a register: `i1`/`i8`/`i16` zero-extended.
    match lty {
        LTy::Int(bits) if *bits < 32 => AbiParam::new(ty).uext(),
        _ => AbiParam::new(ty),
    }
}

fn op_name(op: &OperationRef) -> String {
    op.name()
        .as_string_ref()
        .as_str()
        .unwrap_or("<non-utf8 op name>")
        .to_string()
}

fn string_attr(op: &OperationRef, name: &str) -> Result<String, BackendError> {
    op.attribute(name)
        .ok()
        .and_then(|a| StringAttribute::try_from(a).ok())
        .map(|s| s.value().to_string())
        .ok_or_else(|| BackendError::new(format!("`{}` has no string `{name}`", op_name(op))))
}

fn type_attr(op: &OperationRef, name: &str) -> Result<String, BackendError> {
    op.attribute(name)
        .ok()
        .and_then(|a| TypeAttribute::try_from(a).ok())
        .map(|t| t.value().to_string())
        .ok_or_else(|| BackendError::new(format!("`{}` has no type `{name}`", op_name(op))))
}

// ---- types ------------------------------------------------------------------------------------

/// The LLVM-dialect types the translator understands, parsed from their printed form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LTy {
    Void,
    Int(u32),
    F32,
    F64,
    Ptr,
    Array(u64, Box<LTy>),
    Struct(Vec<LTy>),
    Vector(u64, Box<LTy>),
    Func {
        ret: Box<LTy>,
        params: Vec<LTy>,
        vararg: bool,
    },
}

/// Parses `i64`, `f32`, `!llvm.ptr`, `!llvm.array<4 x f32>`, `!llvm.struct<(ptr, i64)>`,
/// `vector<4xf32>`, `!llvm.func<void (ptr)>` (nested types print without the `!llvm.` prefix).
pub fn parse_type(text: &str) -> Result<LTy, BackendError> {
    let mut p = TypeParser { s: text, pos: 0 };
    let t = p.ty()?;
    p.ws();
    if p.pos != p.s.len() {
        return Err(p.error());
    }
    Ok(t)
}

struct TypeParser<'s> {
    s: &'s str,
    pos: usize,
}

impl TypeParser<'_> {
    fn error(&self) -> BackendError {
        BackendError::new(format!(
            "the CPU backend does not support the type `{}`",
            self.s
        ))
    }
    fn ws(&mut self) {
        while self.s[self.pos..].starts_with(' ') {
            self.pos += 1;
        }
    }
    fn eat(&mut self, token: &str) -> bool {
        self.ws();
        if self.s[self.pos..].starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }
    fn expect(&mut self, token: &str) -> Result<(), BackendError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error())
        }
    }
    fn number(&mut self) -> Result<u64, BackendError> {
        self.ws();
        let digits: String = self.s[self.pos..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        self.pos += digits.len();
        digits.parse().map_err(|_| self.error())
    }
    fn ty(&mut self) -> Result<LTy, BackendError> {
        self.ws();
        self.eat("!llvm.");
        if self.eat("void") {
            Ok(LTy::Void)
        } else if self.eat("ptr") {
            // An address space (`ptr<1>`) does not change the representation.
            if self.eat("<") {
                self.number()?;
                self.expect(">")?;
            }
            Ok(LTy::Ptr)
        } else if self.eat("f32") {
            Ok(LTy::F32)
        } else if self.eat("f64") {
            Ok(LTy::F64)
        } else if self.eat("index") {
            Ok(LTy::Int(64))
        } else if self.eat("array<") {
            let n = self.number()?;
            self.expect("x")?;
            let elem = self.ty()?;
            self.expect(">")?;
            Ok(LTy::Array(n, Box::new(elem)))
        } else if self.eat("struct<(") {
            let mut fields = Vec::new();
            if !self.eat(")") {
                loop {
                    fields.push(self.ty()?);
                    if self.eat(")") {
                        break;
                    }
                    self.expect(",")?;
                }
            }
            self.expect(">")?;
            Ok(LTy::Struct(fields))
        } else if self.eat("vector<") {
            let n = self.number()?;
            self.expect("x")?;
            let elem = self.ty()?;
            self.expect(">")?;
            Ok(LTy::Vector(n, Box::new(elem)))
        } else if self.eat("func<") {
            let ret = self.ty()?;
            self.expect("(")?;
            let mut params = Vec::new();
            let mut vararg = false;
            if !self.eat(")") {
                loop {
                    if self.eat("...") {
                        vararg = true;
                    } else {
                        params.push(self.ty()?);
                    }
                    if self.eat(")") {
                        break;
                    }
                    self.expect(",")?;
                }
            }
            self.expect(">")?;
            Ok(LTy::Func {
                ret: Box::new(ret),
                params,
                vararg,
            })
        } else if self.eat("i") {
            let bits = self.number()?;
            match bits {
                1 | 8 | 16 | 32 | 64 => Ok(LTy::Int(bits as u32)),
                _ => Err(self.error()),
            }
        } else {
            Err(self.error())
        }
    }
}

impl LTy {
    /// Allocation size and alignment with natural alignment (LLVM's default data layout).
    pub fn layout(&self) -> Result<(u64, u64), BackendError> {
        Ok(match self {
            LTy::Int(bits) => {
                let bytes = u64::from(bits.div_ceil(8));
                (bytes, bytes)
            }
            LTy::F32 => (4, 4),
            LTy::F64 | LTy::Ptr => (8, 8),
            LTy::Array(n, elem) => {
                let (size, align) = elem.layout()?;
                (n * size.next_multiple_of(align), align)
            }
            LTy::Vector(n, elem) => {
                let (size, _) = elem.layout()?;
                let total = n * size;
                (total, total.next_power_of_two())
            }
            LTy::Struct(fields) => {
                let (mut off, mut align) = (0u64, 1u64);
                for f in fields {
                    let (s, a) = f.layout()?;
                    off = off.next_multiple_of(a) + s;
                    align = align.max(a);
                }
                (off.next_multiple_of(align), align)
            }
            LTy::Void | LTy::Func { .. } => {
                return Err(BackendError::new(format!("`{self:?}` has no size")));
            }
        })
    }

    fn field_offset(&self, index: u64) -> Result<(u64, LTy), BackendError> {
        let LTy::Struct(fields) = self else {
            return Err(BackendError::new(format!("`{self:?}` is not a struct")));
        };
        let mut off = 0u64;
        for (i, f) in fields.iter().enumerate() {
            let (s, a) = f.layout()?;
            off = off.next_multiple_of(a);
            if i as u64 == index {
                return Ok((off, f.clone()));
            }
            off += s;
        }
        Err(BackendError::new(format!(
            "field {index} out of range for `{self:?}`"
        )))
    }

    fn is_aggregate(&self) -> bool {
        matches!(self, LTy::Array(..) | LTy::Struct(_))
    }
}

fn clif_type(t: &LTy, ptr: ir::Type, sym: &str) -> Result<ir::Type, BackendError> {
    let scalar = |t: &LTy| match t {
        LTy::Int(1 | 8) => Some(types::I8),
        LTy::Int(16) => Some(types::I16),
        LTy::Int(32) => Some(types::I32),
        LTy::Int(64) => Some(types::I64),
        LTy::F32 => Some(types::F32),
        LTy::F64 => Some(types::F64),
        LTy::Ptr => Some(ptr),
        _ => None,
    };
    let found = match t {
        // Cranelift vectors are 128 bits (or wider with AVX): lanes must fill them exactly.
        LTy::Vector(n, elem) if !matches!(**elem, LTy::Int(1)) => scalar(elem)
            .and_then(|e| u32::try_from(*n).ok().and_then(|n| e.by(n)))
            .filter(|v| v.bits() == 128),
        // Vector masks (`fcmp` results) are all-ones/all-zeros lanes of a 128-bit vector.
        LTy::Vector(n, _) => u32::try_from(*n)
            .ok()
            .filter(|n| [2, 4, 8, 16].contains(n))
            .and_then(|n| ir::Type::int(128 / n as u16).and_then(|e| e.by(n))),
        _ => scalar(t),
    };
    found.ok_or_else(|| {
        BackendError::new(format!(
            "@{sym}: the CPU backend does not support values of type `{t:?}`"
        ))
    })
}

// ---- functions --------------------------------------------------------------------------------

struct Callee {
    id: FuncId,
    ret: LTy,
}

/// A translated SSA value: a Cranelift value, or an aggregate known field by field.
#[derive(Clone, Debug)]
enum Val {
    S(ir::Value),
    Agg(Vec<Val>),
}

struct FnTranslator<'a, 'f, 'c, 'm, M: ClifModule> {
    b: FunctionBuilder<'f>,
    module: &'a mut M,
    funcs: &'a HashMap<String, Callee>,
    sym: &'a str,
    vals: HashMap<usize, Val>,
    blocks: HashMap<usize, ir::Block>,
    /// Integer constants by MLIR value: `alloca` sizes and struct GEP indices need them.
    consts: HashMap<usize, i64>,
    func_refs: HashMap<String, ir::FuncRef>,
    types: HashMap<String, LTy>,
    /// The module's outlined parallel loops, translated after the functions.
    outlined: &'a mut Vec<Outlined<'c, 'm>>,
    /// Where `omp.yield` continues: the latch of the innermost parallel loop being translated.
    yield_to: Vec<ir::Block>,
    /// Translate `omp.parallel` as plain loops (inside an outlined loop body).
    inline_parallel: bool,
}

fn key<'c>(v: impl ValueLike<'c>) -> usize {
    v.to_raw().ptr as usize
}

fn block_key(b: &BlockRef) -> usize {
    b.to_raw().ptr as usize
}

/// Float `select` on x86 becomes a branch in Cranelift (a mispredict per spike); selecting the
/// bit patterns as integers gives a `cmov`.
const BRANCH_FREE_FLOAT_SELECT: bool = true;

impl<'a, 'f, 'c, 'm, M: ClifModule> FnTranslator<'a, 'f, 'c, 'm, M> {
    fn err(&self, msg: impl std::fmt::Display) -> BackendError {
        BackendError::new(format!("@{}: {msg}", self.sym))
    }

    fn ptr_ty(&self) -> ir::Type {
        self.module.target_config().pointer_type()
    }

    fn lty_of<'v>(&mut self, v: impl ValueLike<'v>) -> Result<LTy, BackendError> {
        let text = v.r#type().to_string();
        if let Some(t) = self.types.get(&text) {
            return Ok(t.clone());
        }
        let t = parse_type(&text).map_err(|e| self.err(e))?;
        self.types.insert(text, t.clone());
        Ok(t)
    }

    fn cl_ty(&self, t: &LTy) -> Result<ir::Type, BackendError> {
        clif_type(t, self.ptr_ty(), self.sym)
    }

    fn function(&mut self, f: &OperationRef<'c, 'm>) -> Result<(), BackendError> {
        let region = f.region(0).map_err(|e| self.err(e))?;
        let entry = region
            .first_block()
            .ok_or_else(|| self.err("function without a body"))?;
        let order = reverse_post_order(entry);
        self.create_blocks(&order)?;
        let cl = self.block_of(&entry)?;
        let want: Vec<ir::Type> = self
            .b
            .func
            .signature
            .params
            .iter()
            .map(|p| p.value_type)
            .collect();
        let got: Vec<ir::Type> = self
            .b
            .block_params(cl)
            .iter()
            .map(|v| self.b.func.dfg.value_type(*v))
            .collect();
        if want != got {
            return Err(self.err(format!(
                "entry block arguments {got:?} do not match the signature {want:?}"
            )));
        }
        self.translate_blocks(&order)?;
        self.b.seal_all_blocks();
        Ok(())
    }

    /// A Cranelift block, with parameters, for each MLIR block of `order`.
    fn create_blocks(&mut self, order: &[BlockRef<'c, 'm>]) -> Result<(), BackendError> {
        for blk in order {
            let cl = self.b.create_block();
            self.blocks.insert(block_key(blk), cl);
            for a in 0..blk.argument_count() {
                let arg = blk.argument(a).map_err(|e| self.err(e))?;
                let lty = self.lty_of(arg)?;
                if lty.is_aggregate() {
                    return Err(self.err(format!(
                        "block arguments of aggregate type `{}` are not supported",
                        arg.r#type()
                    )));
                }
                let ty = self.cl_ty(&lty)?;
                let p = self.b.append_block_param(cl, ty);
                self.vals.insert(key(arg), Val::S(p));
            }
        }
        Ok(())
    }

    /// Translates the ops of `order`'s blocks (created by [`Self::create_blocks`]).
    fn translate_blocks(&mut self, order: &[BlockRef<'c, 'm>]) -> Result<(), BackendError> {
        for blk in order {
            let cl = self.block_of(blk)?;
            self.b.switch_to_block(cl);
            let mut op = blk.first_operation();
            while let Some(o) = op {
                op = o.next_in_block();
                self.op(&o)?;
            }
        }
        Ok(())
    }

    fn get(&self, v: melior::ir::Value) -> Result<Val, BackendError> {
        self.vals
            .get(&key(v))
            .cloned()
            .ok_or_else(|| self.err(format!("use of an undefined value `{v}`")))
    }

    fn scalar(&self, v: melior::ir::Value) -> Result<ir::Value, BackendError> {
        match self.get(v)? {
            Val::S(x) => Ok(x),
            Val::Agg(_) => Err(self.err(format!("aggregate `{v}` used as a scalar"))),
        }
    }

    fn operand(&self, op: &OperationRef, i: usize) -> Result<ir::Value, BackendError> {
        let v = op.operand(i).map_err(|e| self.err(e))?;
        self.scalar(v)
    }

    fn operands(&self, op: &OperationRef) -> Result<Vec<ir::Value>, BackendError> {
        (0..op.operand_count())
            .map(|i| self.operand(op, i))
            .collect()
    }

    fn set_result(&mut self, op: &OperationRef, v: Val) -> Result<(), BackendError> {
        let r = op.result(0).map_err(|e| self.err(e))?;
        self.vals.insert(key(r), v);
        Ok(())
    }

    fn result_lty(&mut self, op: &OperationRef) -> Result<LTy, BackendError> {
        let r = op.result(0).map_err(|e| self.err(e))?;
        self.lty_of(r)
    }

    fn int_attr(&self, op: &OperationRef, name: &str) -> Result<i64, BackendError> {
        op.attribute(name)
            .ok()
            .and_then(|a| IntegerAttribute::try_from(a).ok())
            .map(|a| a.value())
            .ok_or_else(|| self.err(format!("`{}` lacks the integer `{name}`", op_name(op))))
    }

    fn op(&mut self, op: &OperationRef<'c, 'm>) -> Result<(), BackendError> {
        let full = op_name(op);
        if let Some(omp) = full.strip_prefix("omp.") {
            return self.parallel_op(op, omp);
        }
        let name = full.strip_prefix("llvm.").unwrap_or(&full);
        match name {
            "mlir.constant" => self.constant(op),
            "mlir.zero" | "mlir.poison" | "mlir.undef" => {
                let t = self.result_lty(op)?;
                let v = self.zero_of(&t)?;
                self.set_result(op, v)
            }
            "add" | "sub" | "mul" | "sdiv" | "udiv" | "srem" | "urem" | "and" | "or" | "xor"
            | "shl" | "lshr" | "ashr" => self.int_binary(op, name),
            "fadd" | "fsub" | "fmul" | "fdiv" => {
                let (x, y) = (self.operand(op, 0)?, self.operand(op, 1)?);
                let ins = self.b.ins();
                let r = match name {
                    "fadd" => ins.fadd(x, y),
                    "fsub" => ins.fsub(x, y),
                    "fmul" => ins.fmul(x, y),
                    _ => ins.fdiv(x, y),
                };
                self.set_result(op, Val::S(r))
            }
            "frem" => {
                let t = self.result_lty(op)?;
                let args = self.operands(op)?;
                let r = self.libm(&t, "fmod", &args)?;
                self.set_result(op, Val::S(r))
            }
            "fneg" => {
                let x = self.operand(op, 0)?;
                let r = self.b.ins().fneg(x);
                self.set_result(op, Val::S(r))
            }
            "sext" | "zext" | "trunc" | "sitofp" | "uitofp" | "fptosi" | "fptoui" | "fpext"
            | "fptrunc" | "bitcast" | "ptrtoint" | "inttoptr" | "addrspacecast" => {
                self.cast(op, name)
            }
            "icmp" => self.icmp(op),
            "fcmp" => self.fcmp(op),
            "select" => self.select(op),
            "getelementptr" => self.gep(op),
            "load" => {
                let t = self.result_lty(op)?;
                if t.is_aggregate() {
                    return Err(self.err("loads of aggregates are not supported"));
                }
                let ty = self.cl_ty(&t)?;
                let addr = self.operand(op, 0)?;
                let r = self.b.ins().load(ty, mem_flags(ty), addr, 0);
                self.set_result(op, Val::S(r))
            }
            "store" => {
                let (x, addr) = (self.operand(op, 0)?, self.operand(op, 1)?);
                let ty = self.b.func.dfg.value_type(x);
                self.b.ins().store(mem_flags(ty), x, addr, 0);
                Ok(())
            }
            "insertelement" => {
                let (v, x) = (self.operand(op, 0)?, self.operand(op, 1)?);
                let lane = self.lane_index(op, 2)?;
                let r = self.b.ins().insertlane(v, x, lane);
                self.set_result(op, Val::S(r))
            }
            "extractelement" => {
                let v = self.operand(op, 0)?;
                let lane = self.lane_index(op, 1)?;
                let r = self.b.ins().extractlane(v, lane);
                self.set_result(op, Val::S(r))
            }
            "shufflevector" => self.shuffle(op),
            "alloca" => self.alloca(op),
            "br" => {
                let dest = op.successor(0).map_err(|e| self.err(e))?;
                let args = self.operands(op)?;
                let target = self.block_of(&dest)?;
                let args: Vec<BlockArg> = args.into_iter().map(BlockArg::Value).collect();
                self.b.ins().jump(target, &args);
                Ok(())
            }
            "cond_br" => {
                let then = op.successor(0).map_err(|e| self.err(e))?;
                let other = op.successor(1).map_err(|e| self.err(e))?;
                let all = self.operands(op)?;
                let n_then = then.argument_count();
                if all.len() != 1 + n_then + other.argument_count() {
                    return Err(self.err("cond_br operands do not match its successors"));
                }
                let then_args: Vec<BlockArg> = all[1..1 + n_then]
                    .iter()
                    .copied()
                    .map(BlockArg::Value)
                    .collect();
                let else_args: Vec<BlockArg> = all[1 + n_then..]
                    .iter()
                    .copied()
                    .map(BlockArg::Value)
                    .collect();
                let (t, e) = (self.block_of(&then)?, self.block_of(&other)?);
                self.b.ins().brif(all[0], t, &then_args, e, &else_args);
                Ok(())
            }
            "return" => {
                let args = self.operands(op)?;
                self.b.ins().return_(&args);
                Ok(())
            }
            "unreachable" => {
                self.b.ins().trap(TrapCode::unwrap_user(1));
                Ok(())
            }
            "call" => self.call(op),
            "insertvalue" | "extractvalue" => self.aggregate(op, name),
            _ => match name.strip_prefix("intr.") {
                Some(intr) => self.intrinsic(op, intr),
                None => Err(self.err(format!(
                    "the CPU backend does not support `{full}` (in `{}`)",
                    short(&op.to_string())
                ))),
            },
        }
    }

    fn block_of(&self, b: &BlockRef) -> Result<ir::Block, BackendError> {
        self.blocks
            .get(&block_key(b))
            .copied()
            .ok_or_else(|| self.err("branch to a block outside the function"))
    }

    fn constant(&mut self, op: &OperationRef) -> Result<(), BackendError> {
        let t = self.result_lty(op)?;
        let attr: Attribute = op
            .attribute("value")
            .map_err(|_| self.err("llvm.mlir.constant without a value"))?;
        let v = match t {
            LTy::Int(bits) => {
                let value = IntegerAttribute::try_from(attr)
                    .map(|a| a.value())
                    .or_else(|_| {
                        melior::ir::attribute::BoolAttribute::try_from(attr)
                            .map(|b| i64::from(b.value()))
                    })
                    .map_err(|_| self.err(format!("unsupported integer constant `{attr}`")))?;
                let r = op.result(0).map_err(|e| self.err(e))?;
                self.consts.insert(key(r), value);
                let ty = self.cl_ty(&t)?;
                // Narrow immediates must be given zero-extended to their width.
                let masked = if bits >= 64 {
                    value
                } else {
                    value & ((1i64 << bits) - 1)
                };
                self.b.ins().iconst(ty, masked)
            }
            LTy::F32 | LTy::F64 => {
                let value = FloatAttribute::try_from(attr)
                    .map(|a| a.value())
                    .map_err(|_| self.err(format!("unsupported float constant `{attr}`")))?;
                if t == LTy::F32 {
                    self.b.ins().f32const(value as f32)
                } else {
                    self.b.ins().f64const(value)
                }
            }
            LTy::Vector(..) => self.vector_constant(&t, &attr.to_string())?,
            _ => {
                return Err(self.err(format!("unsupported constant `{attr}` of type `{t:?}`")));
            }
        };
        self.set_result(op, Val::S(v))
    }

    /// A `dense<...>` vector constant: a splat (`dense<1.0>`) or one value per lane.
    fn vector_constant(&mut self, t: &LTy, text: &str) -> Result<ir::Value, BackendError> {
        let ty = self.cl_ty(t)?;
        let body = text
            .strip_prefix("dense<")
            .and_then(|r| r.split_once('>'))
            .map(|(b, _)| b.trim())
            .ok_or_else(|| self.err(format!("unsupported vector constant `{text}`")))?;
        let items: Vec<&str> = body
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(str::trim)
            .collect();
        let lane = ty.lane_type();
        let scalar = |s: &str, b: &mut FunctionBuilder| -> Option<ir::Value> {
            let bits = s
                .strip_prefix("0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok());
            Some(match lane {
                types::F32 => b.ins().f32const(match bits {
                    Some(x) => f32::from_bits(x as u32),
                    None => s.parse::<f32>().ok()?,
                }),
                types::F64 => b.ins().f64const(match bits {
                    Some(x) => f64::from_bits(x),
                    None => s.parse::<f64>().ok()?,
                }),
                _ => {
                    let v = match s {
                        "true" => -1,
                        "false" => 0,
                        _ => s.parse::<i64>().ok()?,
                    };
                    let v = if lane.bits() >= 64 {
                        v
                    } else {
                        v & ((1i64 << lane.bits()) - 1)
                    };
                    b.ins().iconst(lane, v)
                }
            })
        };
        let sym = self.sym;
        let bad = || BackendError::new(format!("@{sym}: unsupported vector constant `{text}`"));
        if items.len() == 1 {
            let s = scalar(items[0], &mut self.b).ok_or_else(bad)?;
            return Ok(self.b.ins().splat(ty, s));
        }
        if items.len() != ty.lane_count() as usize {
            return Err(bad());
        }
        let zero = self.zero_of(t)?;
        let Val::S(mut v) = zero else {
            return Err(bad());
        };
        for (i, s) in items.iter().enumerate() {
            let x = scalar(s, &mut self.b).ok_or_else(bad)?;
            v = self.b.ins().insertlane(v, x, i as u8);
        }
        Ok(v)
    }

    /// A constant lane index operand.
    fn lane_index(&self, op: &OperationRef, i: usize) -> Result<u8, BackendError> {
        let v = op.operand(i).map_err(|e| self.err(e))?;
        self.consts
            .get(&key(v))
            .and_then(|&l| u8::try_from(l).ok())
            .ok_or_else(|| self.err(format!("`{}` needs a constant lane index", op_name(op))))
    }

    /// `shufflevector`: lanes picked one by one (a broadcast becomes one splat).
    fn shuffle(&mut self, op: &OperationRef) -> Result<(), BackendError> {
        let mask = op
            .attribute("mask")
            .ok()
            .and_then(|a| DenseI32ArrayAttribute::try_from(a).ok())
            .ok_or_else(|| self.err("shufflevector without a mask"))?;
        let mask: Vec<i32> = (0..mask.len())
            .map(|i| mask.element(i).map_err(|e| self.err(e)))
            .collect::<Result<_, _>>()?;
        let (a, b) = (self.operand(op, 0)?, self.operand(op, 1)?);
        let t = self.result_lty(op)?;
        let ty = self.cl_ty(&t)?;
        let n_in = self.b.func.dfg.value_type(a).lane_count() as i32;
        let pick = |s: &mut Self, m: i32| {
            if m < n_in {
                s.b.ins().extractlane(a, m.max(0) as u8)
            } else {
                s.b.ins().extractlane(b, (m - n_in) as u8)
            }
        };
        if mask.len() != ty.lane_count() as usize {
            return Err(self.err("shufflevector mask does not match its result"));
        }
        let in_ty = self.b.func.dfg.value_type(a);
        let r = if mask.iter().all(|&m| m == mask[0]) {
            let x = pick(self, mask[0]);
            self.b.ins().splat(ty, x)
        } else if ty.bits() == 128 && in_ty == ty && mask.iter().all(|&m| m >= 0) {
            // One byte shuffle of the two inputs (`pshufb`/`shufps` and friends) instead of a
            // lane extract and insert per lane.
            let width = ty.lane_bits() / 8;
            let bytes: Vec<u8> = mask
                .iter()
                .flat_map(|&m| (0..width).map(move |j| (m as u32 * width + j) as u8))
                .collect();
            let imm = self.b.func.dfg.immediates.push(bytes.into());
            let (a8, b8) = (
                self.b.ins().bitcast(types::I8X16, lane_bitcast(), a),
                self.b.ins().bitcast(types::I8X16, lane_bitcast(), b),
            );
            let r = self.b.ins().shuffle(a8, b8, imm);
            self.b.ins().bitcast(ty, lane_bitcast(), r)
        } else {
            let Val::S(mut v) = self.zero_of(&t)? else {
                return Err(self.err("shufflevector of aggregates"));
            };
            for (i, &m) in mask.iter().enumerate() {
                if m >= 0 {
                    let x = pick(self, m);
                    v = self.b.ins().insertlane(v, x, i as u8);
                }
            }
            v
        };
        self.set_result(op, Val::S(r))
    }

    fn zero_of(&mut self, t: &LTy) -> Result<Val, BackendError> {
        Ok(match t {
            LTy::Array(n, elem) => {
                let z = self.zero_of(elem)?;
                Val::Agg(vec![z; usize::try_from(*n).map_err(|e| self.err(e))?])
            }
            LTy::Struct(fields) => Val::Agg(
                fields
                    .iter()
                    .map(|f| self.zero_of(f))
                    .collect::<Result<_, _>>()?,
            ),
            LTy::F32 => Val::S(self.b.ins().f32const(0.0)),
            LTy::F64 => Val::S(self.b.ins().f64const(0.0)),
            LTy::Vector(..) => {
                let ty = self.cl_ty(t)?;
                let lane = ty.lane_type();
                let z = if lane.is_float() {
                    if lane == types::F32 {
                        self.b.ins().f32const(0.0)
                    } else {
                        self.b.ins().f64const(0.0)
                    }
                } else {
                    self.b.ins().iconst(lane, 0)
                };
                Val::S(self.b.ins().splat(ty, z))
            }
            _ => {
                let ty = self.cl_ty(t)?;
                Val::S(self.b.ins().iconst(ty, 0))
            }
        })
    }

    fn int_binary(&mut self, op: &OperationRef, name: &str) -> Result<(), BackendError> {
        let t = self.result_lty(op)?;
        let (x, y) = (self.operand(op, 0)?, self.operand(op, 1)?);
        // i1 arithmetic modulo 2: + and - are xor, * is and (keeps the 0/1 representation).
        let name = match (name, &t) {
            ("add" | "sub", LTy::Int(1)) => "xor",
            ("mul", LTy::Int(1)) => "and",
            _ => name,
        };
        let ins = self.b.ins();
        let r = match name {
            "add" => ins.iadd(x, y),
            "sub" => ins.isub(x, y),
            "mul" => ins.imul(x, y),
            "sdiv" => ins.sdiv(x, y),
            "udiv" => ins.udiv(x, y),
            "srem" => ins.srem(x, y),
            "urem" => ins.urem(x, y),
            "and" => ins.band(x, y),
            "or" => ins.bor(x, y),
            "xor" => ins.bxor(x, y),
            "shl" => ins.ishl(x, y),
            "lshr" => ins.ushr(x, y),
            _ => ins.sshr(x, y),
        };
        self.set_result(op, Val::S(r))
    }

    fn cast(&mut self, op: &OperationRef, name: &str) -> Result<(), BackendError> {
        let src = op.operand(0).map_err(|e| self.err(e))?;
        let from = self.lty_of(src)?;
        let to = self.result_lty(op)?;
        let x = self.scalar(src)?;
        let (fty, tty) = (self.cl_ty(&from)?, self.cl_ty(&to)?);
        let bool_src = from == LTy::Int(1);
        let r = match name {
            "zext" | "sext" | "trunc" | "ptrtoint" | "inttoptr" | "bitcast" | "addrspacecast"
                if fty == tty && !(name == "sext" && bool_src) =>
            {
                if name == "trunc" && to == LTy::Int(1) {
                    // i8 → i1: keep the low bit only.
                    self.b.ins().band_imm_u(x, 1)
                } else {
                    x
                }
            }
            "zext" => self.b.ins().uextend(tty, x),
            "sext" if bool_src => {
                // i1 true is -1 when sign-extended.
                let wide = if tty == fty {
                    x
                } else {
                    self.b.ins().uextend(tty, x)
                };
                self.b.ins().ineg(wide)
            }
            "sext" => self.b.ins().sextend(tty, x),
            "trunc" | "ptrtoint" | "inttoptr" if tty.bits() < fty.bits() => {
                let r = self.b.ins().ireduce(tty, x);
                if to == LTy::Int(1) {
                    self.b.ins().band_imm_u(r, 1)
                } else {
                    r
                }
            }
            "ptrtoint" | "inttoptr" => self.b.ins().uextend(tty, x),
            "sitofp" if bool_src => {
                let neg = self.b.ins().ineg(x);
                self.b.ins().fcvt_from_sint(tty, neg)
            }
            "sitofp" => self.b.ins().fcvt_from_sint(tty, x),
            "uitofp" => self.b.ins().fcvt_from_uint(tty, x),
            // LLVM makes out-of-range conversions poison; Cranelift's plain conversions trap.
            "fptosi" => self.b.ins().fcvt_to_sint_sat(tty, x),
            "fptoui" => self.b.ins().fcvt_to_uint_sat(tty, x),
            "fpext" => self.b.ins().fpromote(tty, x),
            "fptrunc" => self.b.ins().fdemote(tty, x),
            "bitcast" if fty.bits() == tty.bits() => {
                self.b.ins().bitcast(tty, MemFlagsData::new(), x)
            }
            _ => {
                return Err(self.err(format!(
                    "unsupported conversion `{name}` from `{from:?}` to `{to:?}`"
                )));
            }
        };
        self.set_result(op, Val::S(r))
    }

    fn icmp(&mut self, op: &OperationRef) -> Result<(), BackendError> {
        let lhs = op.operand(0).map_err(|e| self.err(e))?;
        let is_bool = self.lty_of(lhs)? == LTy::Int(1);
        let pred = self.int_attr(op, "predicate")?;
        // LLVM::ICmpPredicate: eq ne slt sle sgt sge ult ule ugt uge.
        let cc = match pred {
            0 => IntCC::Equal,
            1 => IntCC::NotEqual,
            2 => IntCC::SignedLessThan,
            3 => IntCC::SignedLessThanOrEqual,
            4 => IntCC::SignedGreaterThan,
            5 => IntCC::SignedGreaterThanOrEqual,
            6 => IntCC::UnsignedLessThan,
            7 => IntCC::UnsignedLessThanOrEqual,
            8 => IntCC::UnsignedGreaterThan,
            9 => IntCC::UnsignedGreaterThanOrEqual,
            _ => return Err(self.err(format!("unknown icmp predicate {pred}"))),
        };
        // i1 lives as 0/1 in a byte, but signed i1 true is -1: signed order is reversed.
        let cc = if is_bool {
            match cc {
                IntCC::SignedLessThan => IntCC::UnsignedGreaterThan,
                IntCC::SignedLessThanOrEqual => IntCC::UnsignedGreaterThanOrEqual,
                IntCC::SignedGreaterThan => IntCC::UnsignedLessThan,
                IntCC::SignedGreaterThanOrEqual => IntCC::UnsignedLessThanOrEqual,
                cc => cc,
            }
        } else {
            cc
        };
        let (x, y) = (self.operand(op, 0)?, self.operand(op, 1)?);
        let r = self.b.ins().icmp(cc, x, y);
        self.set_result(op, Val::S(r))
    }

    fn fcmp(&mut self, op: &OperationRef) -> Result<(), BackendError> {
        let pred = self.int_attr(op, "predicate")?;
        // LLVM::FCmpPredicate: false oeq ogt oge olt ole one ord ueq ugt uge ult ule une uno true.
        let cc = match pred {
            1 => FloatCC::Equal,
            2 => FloatCC::GreaterThan,
            3 => FloatCC::GreaterThanOrEqual,
            4 => FloatCC::LessThan,
            5 => FloatCC::LessThanOrEqual,
            6 => FloatCC::OrderedNotEqual,
            7 => FloatCC::Ordered,
            8 => FloatCC::UnorderedOrEqual,
            9 => FloatCC::UnorderedOrGreaterThan,
            10 => FloatCC::UnorderedOrGreaterThanOrEqual,
            11 => FloatCC::UnorderedOrLessThan,
            12 => FloatCC::UnorderedOrLessThanOrEqual,
            13 => FloatCC::NotEqual,
            14 => FloatCC::Unordered,
            0 | 15 => {
                let r = self.b.ins().iconst(types::I8, i64::from(pred == 15));
                return self.set_result(op, Val::S(r));
            }
            _ => return Err(self.err(format!("unknown fcmp predicate {pred}"))),
        };
        let (x, y) = (self.operand(op, 0)?, self.operand(op, 1)?);
        // Vector compares give a lane mask (see `clif_type`); x64 lacks two predicates.
        if self.b.func.dfg.value_type(x).is_vector()
            && matches!(cc, FloatCC::OrderedNotEqual | FloatCC::UnorderedOrEqual)
        {
            return Err(self.err(format!("vector fcmp {cc} is not supported")));
        }
        let r = self.b.ins().fcmp(cc, x, y);
        self.set_result(op, Val::S(r))
    }

    fn select(&mut self, op: &OperationRef) -> Result<(), BackendError> {
        let c = self.operand(op, 0)?;
        let t = self.get(op.operand(1).map_err(|e| self.err(e))?)?;
        let f = self.get(op.operand(2).map_err(|e| self.err(e))?)?;
        let r = self.select_val(c, t, f)?;
        self.set_result(op, r)
    }

    fn select_val(&mut self, c: ir::Value, t: Val, f: Val) -> Result<Val, BackendError> {
        match (t, f) {
            (Val::S(t), Val::S(f)) => Ok(Val::S(self.select_scalar(c, t, f))),
            (Val::Agg(t), Val::Agg(f)) if t.len() == f.len() => Ok(Val::Agg(
                t.into_iter()
                    .zip(f)
                    .map(|(t, f)| self.select_val(c, t, f))
                    .collect::<Result<_, _>>()?,
            )),
            _ => Err(self.err("select between values of different shapes")),
        }
    }

    fn select_scalar(&mut self, c: ir::Value, t: ir::Value, f: ir::Value) -> ir::Value {
        let ty = self.b.func.dfg.value_type(t);
        if self.b.func.dfg.value_type(c).is_vector() {
            // A lane mask: bitwise select, branch-free.
            let c = if self.b.func.dfg.value_type(c) == ty {
                c
            } else {
                self.b.ins().bitcast(ty, lane_bitcast(), c)
            };
            return self.b.ins().bitselect(c, t, f);
        }
        if BRANCH_FREE_FLOAT_SELECT && ty.is_float() && !ty.is_vector() {
            let ity = ty.as_int();
            let ti = self.b.ins().bitcast(ity, MemFlagsData::new(), t);
            let fi = self.b.ins().bitcast(ity, MemFlagsData::new(), f);
            let r = self.b.ins().select(c, ti, fi);
            self.b.ins().bitcast(ty, MemFlagsData::new(), r)
        } else {
            self.b.ins().select(c, t, f)
        }
    }

    fn gep(&mut self, op: &OperationRef) -> Result<(), BackendError> {
        let raw = op
            .attribute("rawConstantIndices")
            .ok()
            .and_then(|a| DenseI32ArrayAttribute::try_from(a).ok())
            .ok_or_else(|| self.err("getelementptr without rawConstantIndices"))?;
        let elem = parse_type(&type_attr(op, "elem_type")?).map_err(|e| self.err(e))?;
        let ptr = self.ptr_ty();
        let mut addr = self.operand(op, 0)?;
        let mut next_dynamic = 1;
        let mut offset: i64 = 0;
        let mut cur = elem.clone();
        for k in 0..raw.len() {
            let idx = raw.element(k).map_err(|e| self.err(e))?;
            // The first index steps over whole elements; later ones walk into the element type.
            let (stride, inner) = if k == 0 {
                (cur.layout()?.0, cur.clone())
            } else {
                match &cur {
                    LTy::Array(_, inner) | LTy::Vector(_, inner) => {
                        let (s, a) = inner.layout()?;
                        (s.next_multiple_of(a), (**inner).clone())
                    }
                    LTy::Struct(_) => {
                        let field = if idx == i32::MIN {
                            let v = op.operand(next_dynamic).map_err(|e| self.err(e))?;
                            next_dynamic += 1;
                            *self.consts.get(&key(v)).ok_or_else(|| {
                                self.err("a struct index in getelementptr must be constant")
                            })?
                        } else {
                            i64::from(idx)
                        };
                        let (off, f) = cur.field_offset(field as u64)?;
                        offset = offset.wrapping_add(off as i64);
                        cur = f;
                        continue;
                    }
                    _ => return Err(self.err(format!("getelementptr into `{cur:?}`"))),
                }
            };
            let stride = stride as i64;
            if idx == i32::MIN {
                let v = op.operand(next_dynamic).map_err(|e| self.err(e))?;
                next_dynamic += 1;
                let mut i = self.scalar(v)?;
                let ity = self.b.func.dfg.value_type(i);
                if ity.bits() < ptr.bits() {
                    i = self.b.ins().sextend(ptr, i);
                }
                let scaled = if stride == 1 {
                    i
                } else {
                    self.b.ins().imul_imm_s(i, stride)
                };
                addr = self.b.ins().iadd(addr, scaled);
            } else {
                offset = offset.wrapping_add(i64::from(idx).wrapping_mul(stride));
            }
            cur = inner;
        }
        if offset != 0 {
            addr = self.b.ins().iadd_imm_s(addr, offset);
        }
        self.set_result(op, Val::S(addr))
    }

    fn alloca(&mut self, op: &OperationRef) -> Result<(), BackendError> {
        let elem = parse_type(&type_attr(op, "elem_type")?).map_err(|e| self.err(e))?;
        let n = op.operand(0).map_err(|e| self.err(e))?;
        let count = *self
            .consts
            .get(&key(n))
            .ok_or_else(|| self.err("llvm.alloca with a dynamic size is not supported"))?;
        let (size, align) = elem.layout()?;
        let align = op
            .attribute("alignment")
            .ok()
            .and_then(|a| IntegerAttribute::try_from(a).ok())
            .map_or(align, |a| (a.value() as u64).max(align));
        let bytes = u32::try_from(size.saturating_mul(count.max(0) as u64))
            .map_err(|_| self.err("llvm.alloca larger than 4 GiB"))?;
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            bytes,
            align.trailing_zeros() as u8,
        ));
        let ptr = self.ptr_ty();
        let r = self.b.ins().stack_addr(ptr, slot, 0);
        self.set_result(op, Val::S(r))
    }

    fn aggregate(&mut self, op: &OperationRef, name: &str) -> Result<(), BackendError> {
        let pos = op
            .attribute("position")
            .ok()
            .and_then(|a| DenseI64ArrayAttribute::try_from(a).ok())
            .ok_or_else(|| self.err(format!("{name} without a position")))?;
        let path: Vec<usize> = (0..pos.len())
            .map(|i| {
                pos.element(i)
                    .map_err(|e| self.err(e))
                    .and_then(|p| usize::try_from(p).map_err(|e| self.err(e)))
            })
            .collect::<Result<_, _>>()?;
        let container = self.get(op.operand(0).map_err(|e| self.err(e))?)?;
        if name == "extractvalue" {
            let mut cur = &container;
            for &p in &path {
                cur = match cur {
                    Val::Agg(fields) => fields
                        .get(p)
                        .ok_or_else(|| self.err("extractvalue position out of range"))?,
                    Val::S(_) => return Err(self.err("extractvalue from a scalar")),
                };
            }
            let v = cur.clone();
            self.set_result(op, v)
        } else {
            let value = self.get(op.operand(1).map_err(|e| self.err(e))?)?;
            let mut container = container;
            let mut cur = &mut container;
            for &p in &path {
                cur = match cur {
                    Val::Agg(fields) => fields
                        .get_mut(p)
                        .ok_or_else(|| BackendError::new("insertvalue position out of range"))?,
                    Val::S(_) => return Err(self.err("insertvalue into a scalar")),
                };
            }
            *cur = value;
            self.set_result(op, container)
        }
    }

    fn call(&mut self, op: &OperationRef) -> Result<(), BackendError> {
        let callee = op
            .attribute("callee")
            .ok()
            .and_then(|a| FlatSymbolRefAttribute::try_from(a).ok())
            .map(|a| a.value().to_string())
            .ok_or_else(|| self.err("indirect calls are not supported"))?;
        let target = self
            .funcs
            .get(&callee)
            .ok_or_else(|| self.err(format!("call to the undeclared function @{callee}")))?;
        let (id, ret) = (target.id, target.ret.clone());
        let fref = match self.func_refs.get(&callee) {
            Some(f) => *f,
            None => {
                let f = self.module.declare_func_in_func(id, self.b.func);
                self.func_refs.insert(callee, f);
                f
            }
        };
        let args = self.operands(op)?;
        let inst = self.b.ins().call(fref, &args);
        if ret != LTy::Void {
            let r = self.b.inst_results(inst)[0];
            self.set_result(op, Val::S(r))?;
        }
        Ok(())
    }

    /// A libm function (`name` + `f` for f32), imported into the module once per function.
    fn libm(&mut self, t: &LTy, name: &str, args: &[ir::Value]) -> Result<ir::Value, BackendError> {
        if let LTy::Vector(n, elem) = t {
            // One call per lane.
            let ty = self.cl_ty(t)?;
            let Val::S(mut out) = self.zero_of(t)? else {
                return Err(self.err(format!("`{name}` on `{t:?}` is not supported")));
            };
            for lane in 0..u8::try_from(*n).map_err(|e| self.err(e))? {
                let lanes: Vec<ir::Value> = args
                    .iter()
                    .map(|&a| self.b.ins().extractlane(a, lane))
                    .collect();
                let r = self.libm(elem, name, &lanes)?;
                out = self.b.ins().insertlane(out, r, lane);
            }
            debug_assert_eq!(self.b.func.dfg.value_type(out), ty);
            return Ok(out);
        }
        let (sym, ty) = match t {
            LTy::F32 => (format!("{name}f"), types::F32),
            LTy::F64 => (name.to_string(), types::F64),
            _ => return Err(self.err(format!("`{name}` on `{t:?}` is not supported"))),
        };
        let fref = match self.func_refs.get(&sym) {
            Some(f) => *f,
            None => {
                let mut sig: Signature = self.module.make_signature();
                sig.params
                    .extend(std::iter::repeat_n(AbiParam::new(ty), args.len()));
                sig.returns.push(AbiParam::new(ty));
                let id = self
                    .module
                    .declare_function(&sym, Linkage::Import, &sig)
                    .map_err(|e| self.err(format!("cannot import `{sym}`: {e}")))?;
                let f = self.module.declare_func_in_func(id, self.b.func);
                self.func_refs.insert(sym, f);
                f
            }
        };
        let inst = self.b.ins().call(fref, args);
        Ok(self.b.inst_results(inst)[0])
    }

    fn intrinsic(&mut self, op: &OperationRef, intr: &str) -> Result<(), BackendError> {
        // Hints without semantics.
        if matches!(
            intr,
            "assume"
                | "lifetime.start"
                | "lifetime.end"
                | "invariant.start"
                | "invariant.end"
                | "experimental.noalias.scope.decl"
                | "dbg.value"
                | "dbg.declare"
                | "dbg.label"
                // Every `alloca` is a fixed slot of the function's frame: a stack scope (around
                // a parallel loop's body) has nothing to free.
                | "stacksave"
                | "stackrestore"
        ) {
            if op.result_count() > 0 {
                let t = self.result_lty(op)?;
                let z = self.zero_of(&t)?;
                self.set_result(op, z)?;
            }
            return Ok(());
        }
        if matches!(intr, "memcpy" | "memmove" | "memset") {
            let args = self.operands(op)?;
            if args.len() < 3 {
                return Err(self.err(format!("llvm.intr.{intr} needs 3 operands")));
            }
            let cfg = self.module.target_config();
            let ptr = cfg.pointer_type();
            let mut size = args[2];
            if self.b.func.dfg.value_type(size).bits() < ptr.bits() {
                size = self.b.ins().uextend(ptr, size);
            }
            match intr {
                "memcpy" => self.b.call_memcpy(cfg, args[0], args[1], size),
                "memmove" => self.b.call_memmove(cfg, args[0], args[1], size),
                _ => self.b.call_memset(cfg, args[0], args[1], size),
            }
            return Ok(());
        }
        let t = self.result_lty(op)?;
        let args = self.operands(op)?;
        let arity = |n: usize| {
            if args.len() == n {
                Ok(())
            } else {
                Err(self.err(format!("llvm.intr.{intr} with {} operands", args.len())))
            }
        };
        let r = match intr {
            "sqrt" | "fabs" | "floor" | "ceil" | "trunc" | "roundeven" | "rint" | "nearbyint" => {
                arity(1)?;
                let ins = self.b.ins();
                let x = args[0];
                match intr {
                    "sqrt" => ins.sqrt(x),
                    "fabs" => ins.fabs(x),
                    "floor" => ins.floor(x),
                    "ceil" => ins.ceil(x),
                    "trunc" => ins.trunc(x),
                    // Round-to-nearest-even is the default rounding mode, which rint and
                    // nearbyint follow.
                    _ => ins.nearest(x),
                }
            }
            "maximum" | "minimum" | "copysign" => {
                arity(2)?;
                let (x, y) = (args[0], args[1]);
                let ins = self.b.ins();
                // Cranelift's fmax/fmin are IEEE 754-2019 maximum/minimum: NaN-propagating,
                // -0 < +0, exactly LLVM's `maximum`/`minimum`.
                match intr {
                    "maximum" => ins.fmax(x, y),
                    "minimum" => ins.fmin(x, y),
                    _ => ins.fcopysign(x, y),
                }
            }
            "maxnum" | "minnum" => {
                arity(2)?;
                let (x, y) = (args[0], args[1]);
                // maxnum/minnum return the other operand when one is NaN.
                let m = if intr == "maxnum" {
                    self.b.ins().fmax(x, y)
                } else {
                    self.b.ins().fmin(x, y)
                };
                let x_nan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
                let y_nan = self.b.ins().fcmp(FloatCC::Unordered, y, y);
                let m = self.select_scalar(y_nan, x, m);
                self.select_scalar(x_nan, y, m)
            }
            "fma" | "fmuladd" => {
                arity(3)?;
                // fmuladd may fuse or not; a separate multiply and add matches what LLVM does
                // on targets without FMA and keeps results independent of the host CPU.
                if intr == "fma" {
                    self.b.ins().fma(args[0], args[1], args[2])
                } else {
                    let p = self.b.ins().fmul(args[0], args[1]);
                    self.b.ins().fadd(p, args[2])
                }
            }
            "exp" | "exp2" | "exp10" | "log" | "log2" | "log10" | "sin" | "cos" | "tan"
            | "asin" | "acos" | "atan" | "sinh" | "cosh" | "tanh" | "round" => {
                arity(1)?;
                self.libm(&t, intr, &args)?
            }
            "pow" | "atan2" => {
                arity(2)?;
                self.libm(&t, intr, &args)?
            }
            "powi" => {
                arity(2)?;
                let fty = self.cl_ty(&t)?;
                let e = self.b.ins().fcvt_from_sint(fty, args[1]);
                self.libm(&t, "pow", &[args[0], e])?
            }
            _ => {
                return Err(self.err(format!(
                    "the CPU backend does not support the intrinsic `llvm.intr.{intr}` (in `{}`)",
                    short(&op.to_string())
                )));
            }
        };
        self.set_result(op, Val::S(r))
    }
}

/// Loads and stores of scalars are naturally aligned (`trusted`); vectors need not be 16-byte
/// aligned (a vectorised scan starts at any element), so they claim no alignment.
fn mem_flags(ty: ir::Type) -> MemFlagsData {
    if ty.is_vector() {
        MemFlagsData::new().with_notrap()
    } else {
        MemFlagsData::trusted()
    }
}

/// Flags for a lane-preserving vector bitcast (a mask to float lanes).
fn lane_bitcast() -> MemFlagsData {
    MemFlagsData::new().with_endianness(ir::Endianness::Little)
}

fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() > 160 {
        format!("{}…", line.chars().take(160).collect::<String>())
    } else {
        line.to_string()
    }
}

/// The blocks reachable from `entry`, in reverse post-order (definitions before uses).
fn reverse_post_order<'c, 'a>(entry: BlockRef<'c, 'a>) -> Vec<BlockRef<'c, 'a>> {
    let mut seen = HashSet::new();
    let mut post = Vec::new();
    // (block, index of the next successor to visit)
    let mut stack: Vec<(BlockRef<'c, 'a>, usize)> = vec![(entry, 0)];
    seen.insert(block_key(&entry));
    while let Some((blk, next)) = stack.pop() {
        let succs = blk.terminator().map_or(0, |t| t.successor_count());
        if next < succs {
            stack.push((blk, next + 1));
            if let Some(s) = blk.terminator().and_then(|t| t.successor(next).ok())
                && seen.insert(block_key(&s))
            {
                stack.push((s, 0));
            }
        } else {
            post.push(blk);
        }
    }
    post.reverse();
    post
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_with_and_without_the_dialect_prefix() {
        assert_eq!(parse_type("!llvm.ptr").ok(), Some(LTy::Ptr));
        assert_eq!(parse_type("!llvm.ptr<1>").ok(), Some(LTy::Ptr));
        assert_eq!(parse_type("i1").ok(), Some(LTy::Int(1)));
        assert_eq!(
            parse_type("!llvm.struct<(ptr, ptr, i64, array<2 x i64>)>").ok(),
            Some(LTy::Struct(vec![
                LTy::Ptr,
                LTy::Ptr,
                LTy::Int(64),
                LTy::Array(2, Box::new(LTy::Int(64)))
            ]))
        );
        assert_eq!(
            parse_type("!llvm.func<void (ptr, i64)>").ok(),
            Some(LTy::Func {
                ret: Box::new(LTy::Void),
                params: vec![LTy::Ptr, LTy::Int(64)],
                vararg: false
            })
        );
        assert_eq!(
            parse_type("vector<4xf32>").ok(),
            Some(LTy::Vector(4, Box::new(LTy::F32)))
        );
        for bad in [
            "f16",
            "bf16",
            "i7",
            "!llvm.struct<\"named\", (i32)>",
            "tensor<4xf32>",
            "f32 x",
        ] {
            let err = parse_type(bad).expect_err(bad);
            assert!(err.message.contains(bad), "{err}");
        }
    }

    #[test]
    fn layouts_follow_natural_alignment() {
        let s = LTy::Struct(vec![LTy::Int(8), LTy::F64, LTy::Int(32)]);
        assert_eq!(s.layout().ok(), Some((24, 8)));
        assert_eq!(s.field_offset(1).ok().map(|(o, _)| o), Some(8));
        assert_eq!(s.field_offset(2).ok().map(|(o, _)| o), Some(16));
        assert!(s.field_offset(3).is_err());
        let a = LTy::Array(3, Box::new(LTy::Struct(vec![LTy::F32, LTy::Int(8)])));
        assert_eq!(a.layout().ok(), Some((24, 4)));
        assert!(LTy::Void.layout().is_err());
    }
}
