//! Compile-time values of `.snn` (numbers with units, booleans, strings, neurons, surrogates,
//! attention specs, blocks, builtin specs), constant evaluation of expressions, and binding of
//! call arguments to parameters with type and unit checks.

use super::loader::{DefId, Program};
use crate::diag::{Diagnostic, ErrorCode, FileId, Span};
use crate::syntax::ast::{self, BinOp, Expr, ExprKind, UnOp};
use std::collections::HashMap;
use std::fmt;

/// An attention module over (T, C, H×W), before it is expanded into IR ops.
#[derive(Clone, Debug, PartialEq)]
pub enum AttSpec {
    None,
    Temporal {
        ratio: i64,
    },
    Channel {
        ratio: i64,
    },
    Spatial {
        kernel: i64,
    },
    /// Applied in order, each gate on the tensor the previous one re-weighted (T → C → S).
    Seq(Vec<AttSpec>),
    /// A ReLU after the gated tensor (as in the official TCSA).
    Relu(Box<AttSpec>),
}

impl fmt::Display for AttSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttSpec::None => write!(f, "none"),
            AttSpec::Temporal { ratio } => write!(f, "temporal({ratio})"),
            AttSpec::Channel { ratio } => write!(f, "channel({ratio})"),
            AttSpec::Spatial { kernel } => write!(f, "spatial({kernel})"),
            AttSpec::Seq(parts) => {
                let parts: Vec<String> = parts.iter().map(ToString::to_string).collect();
                write!(f, "{}", parts.join(" * "))
            }
            AttSpec::Relu(inner) => write!(f, "relu({inner})"),
        }
    }
}

/// A user definition with its arguments bound (a configured neuron, surrogate or block).
#[derive(Clone, Debug, PartialEq)]
pub struct Bound {
    pub def: DefId,
    pub name: String,
    pub args: Vec<(String, Value)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A duration in microseconds.
    Time(f64),
    Str(String),
    Tuple(Vec<Value>),
    Neuron(Bound),
    Surrogate(Bound),
    Block(Bound),
    Attention(AttSpec),
    /// A builtin configuration such as `adam(lr = 1e-3)` or `time(25ms)`.
    Spec {
        name: String,
        args: Vec<(String, Value)>,
    },
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Time(_) => "time",
            Value::Str(_) => "string",
            Value::Tuple(_) => "tuple",
            Value::Neuron(_) => "neuron",
            Value::Surrogate(_) => "surrogate",
            Value::Block(_) => "block",
            Value::Attention(_) => "attention",
            Value::Spec { .. } => "spec",
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let args = |args: &[(String, Value)]| {
            args.iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{}", crate::ir::scalar::fmt_f64(*x)),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Time(us) => {
                if us.abs() >= 1000.0 && (us / 1000.0).fract() == 0.0 {
                    write!(f, "{}ms", us / 1000.0)
                } else {
                    write!(f, "{us}us")
                }
            }
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Tuple(items) => {
                let items: Vec<String> = items.iter().map(ToString::to_string).collect();
                write!(f, "({})", items.join(", "))
            }
            Value::Neuron(b) | Value::Surrogate(b) | Value::Block(b) => {
                write!(f, "{}({})", b.name, args(&b.args))
            }
            Value::Attention(a) => write!(f, "{a}"),
            Value::Spec { name, args: a } => write!(f, "{name}({})", args(a)),
        }
    }
}

/// The declared type of a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Int,
    Float,
    Bool,
    Time,
    Str,
    Neuron,
    Surrogate,
    Attention,
    Block,
    /// Anything (builtin specs, tuples).
    Any,
}

impl Ty {
    pub const NAMES: &'static [&'static str] = &[
        "int",
        "float",
        "bool",
        "time",
        "string",
        "neuron",
        "surrogate",
        "attention",
        "block",
    ];

    pub fn from_name(name: &str) -> Option<Ty> {
        Some(match name {
            "int" => Ty::Int,
            "float" => Ty::Float,
            "bool" => Ty::Bool,
            "time" => Ty::Time,
            "string" => Ty::Str,
            "neuron" => Ty::Neuron,
            "surrogate" => Ty::Surrogate,
            "attention" => Ty::Attention,
            "block" => Ty::Block,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Ty::Int => "int",
            Ty::Float => "float",
            Ty::Bool => "bool",
            Ty::Time => "time",
            Ty::Str => "string",
            Ty::Neuron => "neuron",
            Ty::Surrogate => "surrogate",
            Ty::Attention => "attention",
            Ty::Block => "block",
            Ty::Any => "any",
        }
    }

    /// Converts `v` to this type (ints widen to floats), or explains the mismatch.
    pub fn coerce(self, v: Value, span: Span, what: &str) -> Result<Value, Diagnostic> {
        match (self, v) {
            (Ty::Any, v) => Ok(v),
            (Ty::Float, Value::Int(i)) => Ok(Value::Float(i as f64)),
            (Ty::Int, v @ Value::Int(_))
            | (Ty::Float, v @ Value::Float(_))
            | (Ty::Bool, v @ Value::Bool(_))
            | (Ty::Time, v @ Value::Time(_))
            | (Ty::Str, v @ Value::Str(_))
            | (Ty::Neuron, v @ Value::Neuron(_))
            | (Ty::Surrogate, v @ Value::Surrogate(_))
            | (Ty::Attention, v @ Value::Attention(_))
            | (Ty::Block, v @ Value::Block(_)) => Ok(v),
            (Ty::Time, Value::Int(_) | Value::Float(_)) => Err(Diagnostic::error(
                ErrorCode::Unit,
                format!("{what} is a time and needs a unit"),
            )
            .primary(span, "plain number")
            .help("write the unit after the number: `us`, `ms` or `s` (e.g. `25ms`)")),
            (Ty::Int | Ty::Float, Value::Time(_)) => Err(Diagnostic::error(
                ErrorCode::Unit,
                format!("{what} is dimensionless but was given a time"),
            )
            .primary(span, "has a unit")
            .help("drop the unit, or divide by another time to get a ratio")),
            (Ty::Int, Value::Float(x)) => Err(Diagnostic::error(
                ErrorCode::Type,
                format!("{what} must be an int"),
            )
            .primary(
                span,
                format!("found float `{}`", crate::ir::scalar::fmt_f64(x)),
            )
            .help("write a whole number without a decimal point")),
            (ty, v) => Err(Diagnostic::error(
                ErrorCode::Type,
                format!("{what} must be {} {}", article(ty.name()), ty.name()),
            )
            .primary(span, format!("found {} {}", article(v.kind()), v.kind()))),
        }
    }
}

pub fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// A parameter as call binding sees it: from a user definition or a builtin layer.
pub struct ParamSpec<'a> {
    pub name: &'a str,
    pub ty: Ty,
    pub default: DefaultValue<'a>,
}

impl<'a> ParamSpec<'a> {
    pub fn required(name: &'a str, ty: Ty) -> Self {
        ParamSpec {
            name,
            ty,
            default: DefaultValue::Required,
        }
    }

    pub fn new(name: &'a str, ty: Ty, default: DefaultValue<'a>) -> Self {
        ParamSpec { name, ty, default }
    }
}

pub enum DefaultValue<'a> {
    Required,
    Value(Value),
    /// A default expression, evaluated with the parameters bound before it in scope.
    Expr(&'a Expr),
}

/// Names that constant expressions may refer to.
pub struct ConstEnv<'a> {
    pub program: &'a Program,
    pub file: FileId,
    pub locals: &'a HashMap<String, Value>,
}

pub const BUILTIN_CONSTS: &[&str] = &["none", "pi"];
/// Attention primitives and builtin spec functions usable in expressions.
pub const ATTENTION_PRIMITIVES: &[&str] = &["temporal", "channel", "spatial"];

impl ConstEnv<'_> {
    /// Evaluates a compile-time expression.
    pub fn eval(&self, e: &Expr) -> Result<Value, Diagnostic> {
        match &e.kind {
            ExprKind::Number {
                value,
                is_int,
                unit,
            } => match unit.as_deref() {
                None if *is_int && value.abs() < 9.0e15 => Ok(Value::Int(*value as i64)),
                None => Ok(Value::Float(*value)),
                Some(u) => match time_scale(u) {
                    Some(scale) => Ok(Value::Time(value * scale)),
                    None => Err(
                        Diagnostic::error(ErrorCode::Unit, format!("unknown unit `{u}`"))
                            .primary(e.span, "not a unit snnc knows")
                            .suggest(u, ["us", "ms", "s"])
                            .note(
                                "time units: `us`, `ms`, `s`; other parameters are plain numbers",
                            ),
                    ),
                },
            },
            ExprKind::Bool(b) => Ok(Value::Bool(*b)),
            ExprKind::Str(s) => Ok(Value::Str(s.clone())),
            ExprKind::Tuple(items) => Ok(Value::Tuple(
                items
                    .iter()
                    .map(|i| self.eval(i))
                    .collect::<Result<_, _>>()?,
            )),
            ExprKind::Name(path) => self.name(path, e.span),
            ExprKind::Call(call) => self.call(call),
            ExprKind::Unary { op, operand } => {
                let v = self.eval(operand)?;
                match (op, v) {
                    (UnOp::Neg, Value::Int(i)) => Ok(Value::Int(-i)),
                    (UnOp::Neg, Value::Float(x)) => Ok(Value::Float(-x)),
                    (UnOp::Neg, Value::Time(x)) => Ok(Value::Time(-x)),
                    (UnOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
                    (_, v) => Err(Diagnostic::error(
                        ErrorCode::Type,
                        format!(
                            "cannot apply `{}` to {} {}",
                            if *op == UnOp::Neg { "-" } else { "!" },
                            article(v.kind()),
                            v.kind()
                        ),
                    )
                    .primary(operand.span, v.kind())),
                }
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.eval(lhs)?;
                let b = self.eval(rhs)?;
                binary(*op, a, b).map_err(|msg| {
                    let code = if msg.contains("units do not match") {
                        ErrorCode::Unit
                    } else {
                        ErrorCode::Type
                    };
                    Diagnostic::error(code, msg)
                        .primary(e.span, "in this expression")
                        .secondary(lhs.span, "left operand")
                        .secondary(rhs.span, "right operand")
                })
            }
        }
    }

    fn name(&self, path: &ast::Path, span: Span) -> Result<Value, Diagnostic> {
        let dotted = path.dotted();
        if let Some(v) = self.locals.get(&dotted) {
            return Ok(v.clone());
        }
        match dotted.as_str() {
            "none" => return Ok(Value::Attention(AttSpec::None)),
            "pi" => return Ok(Value::Float(std::f64::consts::PI)),
            _ => {}
        }
        if let Some(def) = self
            .program
            .scope(self.file)
            .and_then(|s| s.get(&dotted))
            .copied()
        {
            return self.reference(def, &[], span);
        }
        if ATTENTION_PRIMITIVES.contains(&dotted.as_str()) {
            return self.primitive(&dotted, &[], span);
        }
        // An unknown bare name in a setting (`loss = cross_entropy`) is a builtin spec without args.
        if path.segments.len() == 1 && SPEC_NAMES.contains(&dotted.as_str()) {
            return Ok(Value::Spec {
                name: dotted,
                args: Vec::new(),
            });
        }
        Err(self.unknown(&dotted, span))
    }

    /// The "unknown name" diagnostic with suggestions from every name in reach.
    pub fn unknown(&self, name: &str, span: Span) -> Diagnostic {
        let mut candidates: Vec<&str> = self.locals.keys().map(String::as_str).collect();
        if let Some(scope) = self.program.scope(self.file) {
            candidates.extend(scope.keys().map(String::as_str));
        }
        candidates.extend(BUILTIN_CONSTS);
        candidates.extend(ATTENTION_PRIMITIVES);
        unknown_name(name, span, candidates)
    }

    fn call(&self, call: &ast::Call) -> Result<Value, Diagnostic> {
        let dotted = call.callee.dotted();
        if let Some(def) = self
            .program
            .scope(self.file)
            .and_then(|s| s.get(&dotted))
            .copied()
        {
            return self.reference(def, &call.args, call.span);
        }
        if let Some(Value::Neuron(b) | Value::Block(b) | Value::Surrogate(b)) =
            self.locals.get(&dotted)
        {
            let base = b.clone();
            let mut v = self.reference(base.def, &call.args, call.span)?;
            if let Value::Neuron(nb) | Value::Block(nb) | Value::Surrogate(nb) = &mut v {
                merge_args(nb, &base, call);
            }
            return Ok(v);
        }
        if let Some(v) = self.math(&dotted, &call.args, call.span)? {
            return Ok(v);
        }
        if ATTENTION_PRIMITIVES.contains(&dotted.as_str()) || dotted == "relu" {
            return self.primitive(&dotted, &call.args, call.span);
        }
        if SPEC_NAMES.contains(&dotted.as_str()) {
            let mut args = Vec::new();
            for (i, a) in call.args.iter().enumerate() {
                let name = a
                    .name
                    .as_ref()
                    .map_or_else(|| format!("_{i}"), |n| n.name.clone());
                args.push((name, self.eval(&a.value)?));
            }
            return Ok(Value::Spec { name: dotted, args });
        }
        let mut d = self.unknown(&dotted, call.callee.span);
        if d.help.is_none() {
            d = d.note(format!(
                "builtin functions here: {}, relu, and the settings {}",
                ATTENTION_PRIMITIVES.join(", "),
                SPEC_NAMES.join(", ")
            ));
        }
        Err(d)
    }

    /// Compile-time math on numbers (`-log(init_tau - 1.0)` in a `learn` initialiser).
    fn math(&self, name: &str, args: &[ast::Arg], span: Span) -> Result<Option<Value>, Diagnostic> {
        let arity = match name {
            "exp" | "log" | "sqrt" | "abs" => 1,
            "min" | "max" => 2,
            _ => return Ok(None),
        };
        if args.len() != arity || args.iter().any(|a| a.name.is_some()) {
            return Err(Diagnostic::error(
                ErrorCode::Arity,
                format!(
                    "`{name}` takes {arity} positional argument{}",
                    if arity == 1 { "" } else { "s" }
                ),
            )
            .primary(span, format!("found {}", args.len())));
        }
        let mut xs = Vec::with_capacity(arity);
        for a in args {
            let v = self.eval(&a.value)?;
            let x = match v {
                Value::Int(_) | Value::Float(_) => v.as_f64().unwrap_or(0.0),
                other => {
                    return Err(Diagnostic::error(
                        ErrorCode::Type,
                        format!("`{name}` takes numbers"),
                    )
                    .primary(
                        a.value.span,
                        format!("found {} {}", article(other.kind()), other.kind()),
                    ));
                }
            };
            xs.push(x);
        }
        let y = match name {
            "exp" => xs[0].exp(),
            "log" => xs[0].ln(),
            "sqrt" => xs[0].sqrt(),
            "abs" => xs[0].abs(),
            "min" => xs[0].min(xs[1]),
            _ => xs[0].max(xs[1]),
        };
        if !y.is_finite() {
            return Err(Diagnostic::error(
                ErrorCode::InvalidValue,
                format!("`{name}` of these arguments is not a finite number"),
            )
            .primary(span, "evaluates to NaN or infinity"));
        }
        Ok(Some(Value::Float(y)))
    }

    /// A user definition named in an expression, configured with `args`.
    fn reference(&self, def: DefId, args: &[ast::Arg], span: Span) -> Result<Value, Diagnostic> {
        let item = self
            .program
            .item(def)
            .ok_or_else(|| unknown_name("?", span, []))?;
        let specs: Vec<ParamSpec> = user_specs(item.params())?;
        let def_env = ConstEnv {
            program: self.program,
            file: def.file,
            locals: &HashMap::new(),
        };
        let bound = bind(
            &specs,
            args,
            self,
            &def_env,
            item.name().name.as_str(),
            span,
        )?;
        let name = item.name().name.clone();
        let b = Bound {
            def,
            name,
            args: bound,
        };
        Ok(match item {
            ast::Item::Neuron(_) => Value::Neuron(b),
            ast::Item::Surrogate(_) => Value::Surrogate(b),
            ast::Item::Block(_) => Value::Block(b),
            ast::Item::Attention(a) => {
                let locals: HashMap<String, Value> = b.args.into_iter().collect();
                let env = ConstEnv {
                    program: self.program,
                    file: def.file,
                    locals: &locals,
                };
                match env
                    .eval(&a.body)
                    .map_err(|d| d.at_use(span, &format!("attention `{}`", a.name.name)))?
                {
                    v @ Value::Attention(_) => v,
                    other => {
                        return Err(Diagnostic::error(
                            ErrorCode::Type,
                            format!(
                                "attention `{}` must evaluate to an attention module",
                                a.name.name
                            ),
                        )
                        .primary(
                            a.body.span,
                            format!("this is {} {}", article(other.kind()), other.kind()),
                        ));
                    }
                }
            }
            ast::Item::Model(_) => {
                return Err(Diagnostic::error(
                    ErrorCode::Type,
                    format!("model `{}` cannot be used as a value", item.name().name),
                )
                .primary(span, "a model")
                .help("wrap the reusable part in a `block`"));
            }
        })
    }

    fn primitive(&self, name: &str, args: &[ast::Arg], span: Span) -> Result<Value, Diagnostic> {
        let (pname, ty) = match name {
            "temporal" | "channel" => ("ratio", Ty::Int),
            "spatial" => ("kernel", Ty::Int),
            _ => ("inner", Ty::Attention),
        };
        let default = match name {
            "temporal" => DefaultValue::Value(Value::Int(4)),
            "channel" => DefaultValue::Value(Value::Int(8)),
            "spatial" => DefaultValue::Value(Value::Int(3)),
            _ => DefaultValue::Required,
        };
        let specs = [ParamSpec {
            name: pname,
            ty,
            default,
        }];
        let bound = bind(&specs, args, self, self, name, span)?;
        let v = bound.into_iter().next().map(|(_, v)| v);
        let int = |v: Option<Value>| if let Some(Value::Int(i)) = v { i } else { 0 };
        let check = |what: &str, i: i64, min: i64| {
            if i < min {
                Err(Diagnostic::error(
                    ErrorCode::InvalidValue,
                    format!("{what} must be at least {min}, found {i}"),
                )
                .primary(span, "here"))
            } else {
                Ok(i)
            }
        };
        Ok(Value::Attention(match name {
            "temporal" => AttSpec::Temporal {
                ratio: check("a temporal reduction ratio", int(v), 1)?,
            },
            "channel" => AttSpec::Channel {
                ratio: check("a channel reduction ratio", int(v), 1)?,
            },
            "spatial" => {
                let k = check("a spatial kernel size", int(v), 1)?;
                if k % 2 == 0 {
                    return Err(Diagnostic::error(
                        ErrorCode::InvalidValue,
                        format!("spatial attention kernel must be odd, found {k}"),
                    )
                    .primary(span, "even kernel")
                    .help("use 3 or 7 (the paper's choices) so the attention map keeps H×W"));
                }
                AttSpec::Spatial { kernel: k }
            }
            _ => match v {
                Some(Value::Attention(inner)) => AttSpec::Relu(Box::new(inner)),
                _ => AttSpec::None,
            },
        }))
    }
}

/// Builtin spec names accepted in expressions: framing, datasets, optimisers, schedules, losses.
pub const SPEC_NAMES: &[&str] = &[
    "time",
    "count",
    "frames",
    "nmnist",
    "dvs_gesture",
    "folder",
    "adam",
    "adamw",
    "sgd",
    "cosine",
    "step",
    "plateau",
    "constant",
    "cross_entropy",
    "mse_rate",
];

fn merge_args(nb: &mut Bound, base: &Bound, call: &ast::Call) {
    // Arguments given at this call win; the rest keep the configured value of the parameter.
    let given: Vec<&str> = call
        .args
        .iter()
        .filter_map(|a| a.name.as_ref().map(|n| n.name.as_str()))
        .collect();
    let positional = call.args.iter().filter(|a| a.name.is_none()).count();
    for (i, (k, v)) in nb.args.iter_mut().enumerate() {
        if i >= positional
            && !given.contains(&k.as_str())
            && let Some((_, bv)) = base.args.iter().find(|(bk, _)| bk == k)
        {
            *v = bv.clone();
        }
    }
}

pub fn time_scale(unit: &str) -> Option<f64> {
    match unit {
        "us" => Some(1.0),
        "ms" => Some(1e3),
        "s" => Some(1e6),
        _ => None,
    }
}

pub fn unknown_name<'a>(
    name: &str,
    span: Span,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Diagnostic {
    let d = Diagnostic::error(
        ErrorCode::UnknownName,
        format!("cannot find `{name}` in this scope"),
    )
    .primary(span, "not found")
    .suggest(name, candidates);
    if d.help.is_none()
        && let Some(module) = super::loader::stdlib_home(name)
    {
        return d.help(format!(
            "`{name}` is defined in the standard library: add `import std.{module}.{{{name}}}`"
        ));
    }
    d
}

fn binary(op: BinOp, a: Value, b: Value) -> Result<Value, String> {
    use Value::*;
    let num = |a: &Value| a.as_f64();
    Ok(match (op, &a, &b) {
        (BinOp::Mul, Attention(x), Attention(y)) => {
            let mut parts = Vec::new();
            for s in [x, y] {
                match s {
                    AttSpec::Seq(inner) => parts.extend(inner.iter().cloned()),
                    AttSpec::None => {}
                    other => parts.push(other.clone()),
                }
            }
            Attention(if parts.len() == 1 {
                parts.remove(0)
            } else {
                AttSpec::Seq(parts)
            })
        }
        (_, Int(x), Int(y)) => match op {
            BinOp::Add => Int(x.saturating_add(*y)),
            BinOp::Sub => Int(x.saturating_sub(*y)),
            BinOp::Mul => Int(x.saturating_mul(*y)),
            BinOp::Div if *y == 0 => return Err("division by zero".into()),
            BinOp::Div => Int(x.div_euclid(*y)),
            BinOp::Pow if *y >= 0 => Int(x.saturating_pow((*y).min(u32::MAX as i64) as u32)),
            _ => return binary_float(op, *x as f64, *y as f64),
        },
        (BinOp::Add | BinOp::Sub, Time(x), Time(y)) => {
            Time(if op == BinOp::Add { x + y } else { x - y })
        }
        (BinOp::Div, Time(x), Time(y)) => Float(x / y),
        (BinOp::Mul, Time(x), _) if num(&b).is_some() => Time(x * num(&b).unwrap_or(0.0)),
        (BinOp::Mul, _, Time(y)) if num(&a).is_some() => Time(num(&a).unwrap_or(0.0) * y),
        (BinOp::Div, Time(x), _) if num(&b).is_some() => Time(x / num(&b).unwrap_or(1.0)),
        (
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne,
            Time(x),
            Time(y),
        ) => {
            return binary_float(op, *x, *y);
        }
        (BinOp::And, Bool(x), Bool(y)) => Bool(*x && *y),
        (BinOp::Or, Bool(x), Bool(y)) => Bool(*x || *y),
        (BinOp::Eq, Bool(x), Bool(y)) => Bool(x == y),
        (BinOp::Ne, Bool(x), Bool(y)) => Bool(x != y),
        (_, Int(_) | Float(_), Int(_) | Float(_)) => {
            return binary_float(op, num(&a).unwrap_or(0.0), num(&b).unwrap_or(0.0));
        }
        (_, Time(_), _) | (_, _, Time(_)) => {
            return Err(format!(
                "`{}` mixes a time with {} {}: units do not match",
                op.symbol(),
                article(b.kind()),
                b.kind()
            ));
        }
        _ => {
            return Err(format!(
                "cannot apply `{}` to {} {} and {} {}",
                op.symbol(),
                article(a.kind()),
                a.kind(),
                article(b.kind()),
                b.kind()
            ));
        }
    })
}

fn binary_float(op: BinOp, x: f64, y: f64) -> Result<Value, String> {
    use Value::*;
    Ok(match op {
        BinOp::Add => Float(x + y),
        BinOp::Sub => Float(x - y),
        BinOp::Mul => Float(x * y),
        BinOp::Div => Float(x / y),
        BinOp::Pow => Float(x.powf(y)),
        BinOp::Lt => Bool(x < y),
        BinOp::Le => Bool(x <= y),
        BinOp::Gt => Bool(x > y),
        BinOp::Ge => Bool(x >= y),
        BinOp::Eq => Bool(x == y),
        BinOp::Ne => Bool(x != y),
        BinOp::And | BinOp::Or => return Err(format!("`{}` needs booleans", op.symbol())),
    })
}

/// Parameter specs of a user definition; a parameter with neither type nor default is an error.
pub fn user_specs(params: &[ast::Param]) -> Result<Vec<ParamSpec<'_>>, Diagnostic> {
    params
        .iter()
        .map(|p| {
            let ty = match &p.ty {
                Some(t) => Ty::from_name(&t.name).ok_or_else(|| {
                    Diagnostic::error(ErrorCode::UnknownName, format!("unknown type `{}`", t.name))
                        .primary(t.span, "not a type")
                        .suggest(&t.name, Ty::NAMES.iter().copied())
                        .note(format!("types: {}", Ty::NAMES.join(", ")))
                })?,
                None => Ty::Any,
            };
            let default = match &p.default {
                Some(e) => DefaultValue::Expr(e),
                None if ty == Ty::Any => {
                    return Err(Diagnostic::error(ErrorCode::Type, format!("parameter `{}` needs a type or a default", p.name.name))
                        .primary(p.name.span, "untyped parameter without default")
                        .help(format!("write `{}: int` (or float, bool, time, neuron, attention, ...) or `{} = <default>`", p.name.name, p.name.name)));
                }
                None => DefaultValue::Required,
            };
            Ok(ParamSpec { name: p.name.name.as_str(), ty, default })
        })
        .collect()
}

/// Binds call arguments (evaluated in `caller`) to parameters; defaults are evaluated in
/// `callee` with the earlier parameters in scope. Returns values in parameter order.
pub fn bind(
    specs: &[ParamSpec],
    args: &[ast::Arg],
    caller: &ConstEnv,
    callee: &ConstEnv,
    callee_name: &str,
    call_span: Span,
) -> Result<Vec<(String, Value)>, Diagnostic> {
    let signature = || {
        let ps: Vec<String> = specs
            .iter()
            .map(|p| match p.default {
                DefaultValue::Required => format!("{}: {}", p.name, p.ty.name()),
                _ => format!("{} = ...", p.name),
            })
            .collect();
        format!("`{callee_name}` takes ({})", ps.join(", "))
    };
    let mut given: Vec<Option<(Value, Span)>> = vec![None; specs.len()];
    let mut positional = 0;
    for arg in args {
        let index = match &arg.name {
            None => {
                if positional >= specs.len() {
                    return Err(Diagnostic::error(
                        ErrorCode::Arity,
                        format!("too many arguments to `{callee_name}`"),
                    )
                    .primary(arg.value.span, "unexpected argument")
                    .help(signature()));
                }
                positional += 1;
                positional - 1
            }
            Some(name) => match specs.iter().position(|p| p.name == name.name) {
                Some(i) => i,
                None => {
                    return Err(Diagnostic::error(
                        ErrorCode::Arity,
                        format!("`{callee_name}` has no parameter `{}`", name.name),
                    )
                    .primary(name.span, "unknown parameter")
                    .suggest(&name.name, specs.iter().map(|p| p.name))
                    .note(signature()));
                }
            },
        };
        if let Some((_, first)) = &given[index] {
            return Err(Diagnostic::error(
                ErrorCode::Arity,
                format!("parameter `{}` given twice", specs[index].name),
            )
            .primary(arg.value.span, "second value")
            .secondary(*first, "first value"));
        }
        let v = caller.eval(&arg.value)?;
        let v = specs[index]
            .ty
            .coerce(v, arg.value.span, &format!("`{}`", specs[index].name))?;
        given[index] = Some((v, arg.value.span));
    }
    let mut bound: HashMap<String, Value> = callee.locals.clone();
    let mut out = Vec::with_capacity(specs.len());
    for (spec, g) in specs.iter().zip(given) {
        let v = match (g, &spec.default) {
            (Some((v, _)), _) => v,
            (None, DefaultValue::Value(v)) => v.clone(),
            (None, DefaultValue::Expr(e)) => {
                let env = ConstEnv {
                    program: callee.program,
                    file: callee.file,
                    locals: &bound,
                };
                let v = env.eval(e)?;
                spec.ty
                    .coerce(v, e.span, &format!("the default of `{}`", spec.name))?
            }
            (None, DefaultValue::Required) => {
                return Err(Diagnostic::error(
                    ErrorCode::Arity,
                    format!("missing argument `{}` for `{callee_name}`", spec.name),
                )
                .primary(call_span, format!("`{}` is required", spec.name))
                .help(signature()));
            }
        };
        bound.insert(spec.name.to_string(), v.clone());
        out.push((spec.name.to_string(), v));
    }
    Ok(out)
}
