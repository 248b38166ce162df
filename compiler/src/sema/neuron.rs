//! Instantiates `neuron` and `surrogate` definitions with bound parameters into the IR's scalar
//! programs, checking the rules a neuron must follow (states, exactly one `fire`, names).

use super::loader::Program;
use super::value::{Bound, ConstEnv, Value, article, unknown_name};
use crate::diag::{Diagnostic, ErrorCode, Span};
use crate::ir::scalar::*;
use crate::syntax::ast::{self, BinOp, Expr, ExprKind, NeuronStmt, UnOp};
use std::collections::HashMap;

/// Evaluates every `require` of a definition; a false one is an invalid-value error.
pub fn check_requires<'a>(
    requires: impl IntoIterator<Item = &'a ast::Require>,
    env: &ConstEnv,
    use_span: Span,
    what: &str,
) -> Result<(), Diagnostic> {
    for r in requires {
        match env.eval(&r.cond)? {
            Value::Bool(true) => {}
            Value::Bool(false) => {
                let args: Vec<String> = {
                    let mut v: Vec<_> = env
                        .locals
                        .iter()
                        .map(|(k, v)| format!("{k} = {v}"))
                        .collect();
                    v.sort();
                    v
                };
                let message = r
                    .message
                    .clone()
                    .unwrap_or_else(|| "requirement not met".into());
                return Err(Diagnostic::error(
                    ErrorCode::InvalidValue,
                    format!("invalid arguments for {what}: {message}"),
                )
                .primary(use_span, "used with these arguments")
                .secondary(r.span, "this requirement fails")
                .note(format!("arguments: {}", args.join(", "))));
            }
            other => {
                return Err(Diagnostic::error(
                    ErrorCode::Type,
                    "a `require` condition must be a bool",
                )
                .primary(
                    r.cond.span,
                    format!("this is {} {}", article(other.kind()), other.kind()),
                ));
            }
        }
    }
    Ok(())
}

struct NeuronBuilder<'a> {
    env: ConstEnv<'a>,
    states: Vec<(String, f64)>,
    learns: Vec<(String, f64)>,
    locals: Vec<String>,
    surrogates: Vec<SurrogateProgram>,
    fires: Vec<Span>,
    /// Building a surrogate's derivative: `x` is its argument and `input` means nothing.
    in_surrogate: bool,
}

/// Builds the scalar program of a configured neuron.
pub fn instantiate_neuron(
    program: &Program,
    neuron: &Bound,
    use_span: Span,
) -> Result<NeuronProgram, Diagnostic> {
    let Some(ast::Item::Neuron(def)) = program.item(neuron.def) else {
        return Err(unknown_name(&neuron.name, use_span, []));
    };
    let locals_map: HashMap<String, Value> = neuron.args.iter().cloned().collect();
    let env = ConstEnv {
        program,
        file: neuron.def.file,
        locals: &locals_map,
    };
    let requires = def.body.iter().filter_map(|s| {
        if let NeuronStmt::Require(r) = s {
            Some(r)
        } else {
            None
        }
    });
    check_requires(
        requires,
        &env,
        use_span,
        &format!("neuron `{}`", def.name.name),
    )?;
    let mut b = NeuronBuilder {
        env,
        states: vec![],
        learns: vec![],
        locals: vec![],
        surrogates: vec![],
        fires: vec![],
        in_surrogate: false,
    };
    let mut steps = Vec::new();
    let mut spike = None;
    let mut fire_step = 0;
    for stmt in &def.body {
        match stmt {
            NeuronStmt::Require(_) => {}
            NeuronStmt::State { name, init } | NeuronStmt::Learn { name, init } => {
                b.check_fresh(name)?;
                let init = b.const_number(init)?;
                if matches!(stmt, NeuronStmt::State { .. }) {
                    b.states.push((name.name.clone(), init));
                } else {
                    b.learns.push((name.name.clone(), init));
                }
            }
            NeuronStmt::Assign { target, value } => {
                let fires_before = b.fires.len();
                let expr = b.scalar(value)?;
                let is_fire = matches!(expr, Scalar::Fire { .. });
                let target_ref =
                    if let Some(i) = b.states.iter().position(|(n, _)| *n == target.name) {
                        Target::State(i)
                    } else if b.learns.iter().any(|(n, _)| *n == target.name)
                        || b.env.locals.contains_key(&target.name)
                    {
                        return Err(Diagnostic::error(
                        ErrorCode::Neuron,
                        format!("cannot assign to `{}`", target.name),
                    )
                    .primary(
                        target.span,
                        "a parameter or learnable scalar is fixed during a step",
                    )
                    .help(
                        "declare a `state` to carry a value across steps, or use a new local name",
                    ));
                    } else {
                        let i = b
                            .locals
                            .iter()
                            .position(|n| *n == target.name)
                            .unwrap_or_else(|| {
                                b.locals.push(target.name.clone());
                                b.locals.len() - 1
                            });
                        Target::Local(i)
                    };
                if b.fires.len() > fires_before {
                    if !is_fire {
                        return Err(Diagnostic::error(
                            ErrorCode::Neuron,
                            "`fire` must be assigned directly to the spike output",
                        )
                        .primary(value.span, "`fire(...)` inside a larger expression")
                        .help(
                            "write `spike = fire(v - v_th)` and use `spike` in later equations",
                        ));
                    }
                    if let Target::Local(i) = target_ref {
                        spike = Some(i);
                        fire_step = steps.len();
                    } else {
                        return Err(Diagnostic::error(
                            ErrorCode::Neuron,
                            "spikes cannot be a state variable",
                        )
                        .primary(target.span, "assign `fire(...)` to a new local name"));
                    }
                }
                steps.push((target_ref, expr));
            }
        }
    }
    if b.states.is_empty() {
        return Err(Diagnostic::error(
            ErrorCode::Neuron,
            format!("neuron `{}` has no state", def.name.name),
        )
        .primary(def.name.span, "needs at least one `state`")
        .help("declare the membrane potential first, e.g. `state v = 0.0`"));
    }
    if b.fires.len() > 1 {
        return Err(Diagnostic::error(
            ErrorCode::Neuron,
            format!("neuron `{}` fires more than once per step", def.name.name),
        )
        .primary(b.fires[1], "second `fire`")
        .secondary(b.fires[0], "first `fire`"));
    }
    let Some(spike) = spike else {
        return Err(Diagnostic::error(
            ErrorCode::Neuron,
            format!("neuron `{}` never fires", def.name.name),
        )
        .primary(def.name.span, "no `fire(...)` in its equations")
        .help("add `spike = fire(v - v_th)` after the charge equation"));
    };
    Ok(NeuronProgram {
        name: def.name.name.clone(),
        args: neuron
            .args
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        states: b.states,
        learns: b.learns,
        locals: b.locals,
        steps,
        spike,
        surrogates: b.surrogates,
        fire_step,
    })
}

/// Builds the derivative program of a configured surrogate.
pub fn instantiate_surrogate(
    program: &Program,
    s: &Bound,
    use_span: Span,
) -> Result<SurrogateProgram, Diagnostic> {
    let Some(ast::Item::Surrogate(def)) = program.item(s.def) else {
        return Err(unknown_name(&s.name, use_span, []));
    };
    let locals_map: HashMap<String, Value> = s.args.iter().cloned().collect();
    let env = ConstEnv {
        program,
        file: s.def.file,
        locals: &locals_map,
    };
    let mut b = NeuronBuilder {
        env,
        states: vec![],
        learns: vec![],
        locals: vec!["x".into()],
        surrogates: vec![],
        fires: vec![],
        in_surrogate: true,
    };
    let derivative = b.scalar_in_surrogate(&def.derivative)?;
    let args = s
        .args
        .iter()
        .filter_map(|(k, v)| v.as_f64().map(|f| (k.clone(), f)))
        .collect();
    Ok(SurrogateProgram {
        name: def.name.name.clone(),
        args,
        derivative,
    })
}

const FUNCTIONS: &[&str] = &[
    "exp", "log", "sqrt", "abs", "sigmoid", "tanh", "atan", "relu", "detach", "min", "max",
    "select", "fire",
];

impl NeuronBuilder<'_> {
    fn check_fresh(&self, name: &ast::Ident) -> Result<(), Diagnostic> {
        let taken = self.states.iter().any(|(n, _)| *n == name.name)
            || self.learns.iter().any(|(n, _)| *n == name.name)
            || self.env.locals.contains_key(&name.name)
            || name.name == "input";
        if taken {
            return Err(Diagnostic::error(
                ErrorCode::Duplicate,
                format!("`{}` is already defined in this neuron", name.name),
            )
            .primary(name.span, "redefined here")
            .help("states, learnable scalars, parameters and `input` share one namespace"));
        }
        Ok(())
    }

    fn const_number(&self, e: &Expr) -> Result<f64, Diagnostic> {
        let v = self.env.eval(e)?;
        v.as_f64().ok_or_else(|| {
            Diagnostic::error(ErrorCode::Type, "an initial value must be a number").primary(
                e.span,
                format!("this is {} {}", article(v.kind()), v.kind()),
            )
        })
    }

    fn scalar_in_surrogate(&mut self, e: &Expr) -> Result<Scalar, Diagnostic> {
        self.scalar(e)
    }

    fn var(&self, name: &str) -> Option<Scalar> {
        if name == "input" && !self.in_surrogate {
            return Some(Scalar::Var(Var::Input));
        }
        if let Some(i) = self.states.iter().position(|(n, _)| n == name) {
            return Some(Scalar::Var(Var::State(i)));
        }
        if let Some(i) = self.learns.iter().position(|(n, _)| n == name) {
            return Some(Scalar::Var(Var::Learn(i)));
        }
        if let Some(i) = self.locals.iter().position(|n| n == name) {
            // In a surrogate, local 0 is its argument `x`.
            return Some(if self.in_surrogate && i == 0 {
                Scalar::Var(Var::Input)
            } else {
                Scalar::Var(Var::Local(i))
            });
        }
        None
    }

    fn scalar(&mut self, e: &Expr) -> Result<Scalar, Diagnostic> {
        // Anything free of per-step variables is a compile-time constant.
        match &e.kind {
            ExprKind::Name(path) => {
                let name = path.dotted();
                if let Some(v) = self.var(&name) {
                    return Ok(v);
                }
                let v = self.env.eval(e).map_err(|d| {
                    if d.code == ErrorCode::UnknownName {
                        let mut names: Vec<&str> =
                            self.states.iter().map(|s| s.0.as_str()).collect();
                        names.extend(self.learns.iter().map(|s| s.0.as_str()));
                        names.extend(self.locals.iter().map(String::as_str));
                        names.extend(self.env.locals.keys().map(String::as_str));
                        names.push("input");
                        unknown_name(&name, e.span, names)
                    } else {
                        d
                    }
                })?;
                self.constant(v, e.span)
            }
            ExprKind::Number { .. } | ExprKind::Bool(_) => {
                let v = self.env.eval(e)?;
                self.constant(v, e.span)
            }
            ExprKind::Unary { op, operand } => {
                let x = self.scalar(operand)?;
                Ok(Scalar::unary(
                    if *op == UnOp::Neg {
                        ScalarUnary::Neg
                    } else {
                        ScalarUnary::Not
                    },
                    x,
                ))
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.scalar(lhs)?;
                let b = self.scalar(rhs)?;
                let op = match op {
                    BinOp::Add => ScalarBinary::Add,
                    BinOp::Sub => ScalarBinary::Sub,
                    BinOp::Mul => ScalarBinary::Mul,
                    BinOp::Div => ScalarBinary::Div,
                    BinOp::Pow => ScalarBinary::Pow,
                    BinOp::Lt => ScalarBinary::Lt,
                    BinOp::Le => ScalarBinary::Le,
                    BinOp::Gt => ScalarBinary::Gt,
                    BinOp::Ge => ScalarBinary::Ge,
                    BinOp::Eq => ScalarBinary::Eq,
                    BinOp::Ne => ScalarBinary::Ne,
                    BinOp::And => ScalarBinary::And,
                    BinOp::Or => ScalarBinary::Or,
                };
                Ok(Scalar::binary(op, a, b))
            }
            ExprKind::Call(call) => self.call(call, e.span),
            ExprKind::Str(_) | ExprKind::Tuple(_) => Err(Diagnostic::error(
                ErrorCode::Type,
                "neuron equations compute numbers",
            )
            .primary(e.span, "not a number")),
        }
    }

    fn constant(&self, v: Value, span: Span) -> Result<Scalar, Diagnostic> {
        match v {
            Value::Time(_) => Err(Diagnostic::error(
                ErrorCode::Unit,
                "a time cannot enter a neuron equation directly",
            )
            .primary(span, "has a unit")
            .help("divide by another time to get a ratio, e.g. `exp(-dt / tau)`")),
            v => v.as_f64().map(Scalar::Const).ok_or_else(|| {
                Diagnostic::error(
                    ErrorCode::Type,
                    format!(
                        "{} {} cannot be used in an equation",
                        article(v.kind()),
                        v.kind()
                    ),
                )
                .primary(span, "not a number")
            }),
        }
    }

    fn call(&mut self, call: &ast::Call, span: Span) -> Result<Scalar, Diagnostic> {
        let name = call.callee.dotted();
        if let Some(op) = ScalarUnary::from_function(&name) {
            let mut a = self.positional(call, &name, 1, span)?;
            return Ok(Scalar::unary(op, a.remove(0)));
        }
        match name.as_str() {
            "min" | "max" => {
                let mut a = self.positional(call, &name, 2, span)?;
                let b = a.remove(1);
                Ok(Scalar::binary(
                    if name == "min" {
                        ScalarBinary::Min
                    } else {
                        ScalarBinary::Max
                    },
                    a.remove(0),
                    b,
                ))
            }
            "select" => {
                let mut a = self.positional(call, &name, 3, span)?;
                let c = a.remove(0);
                let t = a.remove(0);
                Ok(Scalar::select(c, t, a.remove(0)))
            }
            "fire" => self.fire(call, span),
            _ => Err(
                unknown_name(&name, call.callee.span, FUNCTIONS.iter().copied())
                    .note(format!("functions in equations: {}", FUNCTIONS.join(", "))),
            ),
        }
    }

    fn positional(
        &mut self,
        call: &ast::Call,
        name: &str,
        n: usize,
        span: Span,
    ) -> Result<Vec<Scalar>, Diagnostic> {
        let args: Vec<&ast::Arg> = call.args.iter().filter(|a| a.name.is_none()).collect();
        if args.len() != n || args.len() != call.args.len() {
            let plural = if n == 1 { "" } else { "s" };
            return Err(Diagnostic::error(
                ErrorCode::Arity,
                format!(
                    "`{name}` takes {n} argument{plural}, found {}",
                    call.args.len()
                ),
            )
            .primary(span, "wrong number of arguments"));
        }
        args.iter().map(|a| self.scalar(&a.value)).collect()
    }

    fn fire(&mut self, call: &ast::Call, span: Span) -> Result<Scalar, Diagnostic> {
        if self.states.is_empty() {
            return Err(Diagnostic::error(
                ErrorCode::Neuron,
                "`fire` is only allowed in neuron equations",
            )
            .primary(span, "here"));
        }
        let arg = call.args.iter().find(|a| a.name.is_none()).ok_or_else(|| {
            Diagnostic::error(ErrorCode::Arity, "`fire` needs the value to threshold")
                .primary(span, "e.g. `fire(v - v_th)`")
        })?;
        let surrogate = match call.args.iter().find(|a| a.name.as_ref().is_some_and(|n| n.name == "surrogate")) {
            Some(a) => self.env.eval(&a.value)?,
            None => self.env.locals.get("surrogate").cloned().ok_or_else(|| {
                Diagnostic::error(ErrorCode::Neuron, "`fire` needs a surrogate gradient")
                    .primary(span, "no `surrogate` parameter in this neuron")
                    .help("add a parameter `surrogate = atan()` to the neuron, or write `fire(v - v_th, surrogate = atan())`")
            })?,
        };
        let Value::Surrogate(s) = surrogate else {
            return Err(Diagnostic::error(
                ErrorCode::Type,
                format!(
                    "a surrogate was expected, found {} {}",
                    article(surrogate.kind()),
                    surrogate.kind()
                ),
            )
            .primary(span, "in this `fire`"));
        };
        let program = instantiate_surrogate(self.env.program, &s, span)?;
        let arg = self.scalar(&arg.value)?;
        self.fires.push(span);
        let index = self
            .surrogates
            .iter()
            .position(|p| *p == program)
            .unwrap_or_else(|| {
                self.surrogates.push(program);
                self.surrogates.len() - 1
            });
        Ok(Scalar::Fire {
            arg: Box::new(arg),
            surrogate: index,
        })
    }
}
