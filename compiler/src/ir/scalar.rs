//! Scalar programs inside the IR: a neuron's per-step update equations and a surrogate's
//! derivative, as small expression trees over constants, states, learnable scalars and locals.

use serde::Serialize;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ScalarUnary {
    Neg,
    Not,
    Exp,
    Log,
    Sqrt,
    Abs,
    Sigmoid,
    Tanh,
    Atan,
    Relu,
    /// Passes the value forward and blocks its gradient (e.g. spikes in a detached reset).
    Detach,
}

impl ScalarUnary {
    pub fn name(self) -> &'static str {
        match self {
            ScalarUnary::Neg => "neg",
            ScalarUnary::Not => "not",
            ScalarUnary::Exp => "exp",
            ScalarUnary::Log => "log",
            ScalarUnary::Sqrt => "sqrt",
            ScalarUnary::Abs => "abs",
            ScalarUnary::Sigmoid => "sigmoid",
            ScalarUnary::Tanh => "tanh",
            ScalarUnary::Atan => "atan",
            ScalarUnary::Relu => "relu",
            ScalarUnary::Detach => "detach",
        }
    }

    /// Builtin function names usable in neuron and surrogate equations.
    pub fn from_function(name: &str) -> Option<Self> {
        Some(match name {
            "exp" => ScalarUnary::Exp,
            "log" => ScalarUnary::Log,
            "sqrt" => ScalarUnary::Sqrt,
            "abs" => ScalarUnary::Abs,
            "sigmoid" => ScalarUnary::Sigmoid,
            "tanh" => ScalarUnary::Tanh,
            "atan" => ScalarUnary::Atan,
            "relu" => ScalarUnary::Relu,
            "detach" => ScalarUnary::Detach,
            _ => return None,
        })
    }

    pub fn eval(self, x: f64) -> f64 {
        match self {
            ScalarUnary::Neg => -x,
            ScalarUnary::Not => f64::from(x == 0.0),
            ScalarUnary::Exp => x.exp(),
            ScalarUnary::Log => x.ln(),
            ScalarUnary::Sqrt => x.sqrt(),
            ScalarUnary::Abs => x.abs(),
            ScalarUnary::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            ScalarUnary::Tanh => x.tanh(),
            ScalarUnary::Atan => x.atan(),
            ScalarUnary::Relu => x.max(0.0),
            ScalarUnary::Detach => x,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ScalarBinary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Min,
    Max,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl ScalarBinary {
    pub fn symbol(self) -> &'static str {
        match self {
            ScalarBinary::Add => "+",
            ScalarBinary::Sub => "-",
            ScalarBinary::Mul => "*",
            ScalarBinary::Div => "/",
            ScalarBinary::Pow => "^",
            ScalarBinary::Min => "min",
            ScalarBinary::Max => "max",
            ScalarBinary::Lt => "<",
            ScalarBinary::Le => "<=",
            ScalarBinary::Gt => ">",
            ScalarBinary::Ge => ">=",
            ScalarBinary::Eq => "==",
            ScalarBinary::Ne => "!=",
            ScalarBinary::And => "&&",
            ScalarBinary::Or => "||",
        }
    }

    pub fn eval(self, a: f64, b: f64) -> f64 {
        match self {
            ScalarBinary::Add => a + b,
            ScalarBinary::Sub => a - b,
            ScalarBinary::Mul => a * b,
            ScalarBinary::Div => a / b,
            ScalarBinary::Pow => a.powf(b),
            ScalarBinary::Min => a.min(b),
            ScalarBinary::Max => a.max(b),
            ScalarBinary::Lt => f64::from(a < b),
            ScalarBinary::Le => f64::from(a <= b),
            ScalarBinary::Gt => f64::from(a > b),
            ScalarBinary::Ge => f64::from(a >= b),
            ScalarBinary::Eq => f64::from(a == b),
            ScalarBinary::Ne => f64::from(a != b),
            ScalarBinary::And => f64::from(a != 0.0 && b != 0.0),
            ScalarBinary::Or => f64::from(a != 0.0 || b != 0.0),
        }
    }

    /// Comparisons and logic produce 0/1 and have zero derivative almost everywhere.
    pub fn is_predicate(self) -> bool {
        matches!(
            self,
            ScalarBinary::Lt
                | ScalarBinary::Le
                | ScalarBinary::Gt
                | ScalarBinary::Ge
                | ScalarBinary::Eq
                | ScalarBinary::Ne
                | ScalarBinary::And
                | ScalarBinary::Or
        )
    }
}

/// A variable a scalar expression reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Var {
    /// The neuron's input current at this step (in a surrogate: the argument `x`).
    Input,
    /// The n-th state variable (its value as updated so far in this step).
    State(usize),
    /// The n-th learnable scalar.
    Learn(usize),
    /// The n-th per-step local.
    Local(usize),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Scalar {
    Const(f64),
    Var(Var),
    Unary(ScalarUnary, Box<Scalar>),
    Binary(ScalarBinary, Box<Scalar>, Box<Scalar>),
    /// `select(cond, a, b)`: a where cond ≠ 0, else b; gradient flows to the chosen branch only.
    Select(Box<Scalar>, Box<Scalar>, Box<Scalar>),
    /// Heaviside step `x >= 0` forward; the surrogate's derivative backward.
    Fire {
        arg: Box<Scalar>,
        surrogate: usize,
    },
}

impl Scalar {
    pub fn unary(op: ScalarUnary, x: Scalar) -> Scalar {
        match x {
            Scalar::Const(c) if op != ScalarUnary::Detach => Scalar::Const(op.eval(c)),
            x => Scalar::Unary(op, Box::new(x)),
        }
    }

    /// Builds `a op b`, folding constants and the identities that keep printed IR readable.
    pub fn binary(op: ScalarBinary, a: Scalar, b: Scalar) -> Scalar {
        match (op, &a, &b) {
            (_, Scalar::Const(x), Scalar::Const(y)) => Scalar::Const(op.eval(*x, *y)),
            (ScalarBinary::Add, Scalar::Const(z), _) if *z == 0.0 => b,
            (ScalarBinary::Add | ScalarBinary::Sub, _, Scalar::Const(z)) if *z == 0.0 => a,
            (ScalarBinary::Mul, Scalar::Const(o), _) if *o == 1.0 => b,
            // Parameters such as `v_reset = 0` make whole terms vanish; keep the printed IR minimal.
            (ScalarBinary::Mul, Scalar::Const(z), _) | (ScalarBinary::Mul, _, Scalar::Const(z))
                if *z == 0.0 =>
            {
                Scalar::Const(0.0)
            }
            (ScalarBinary::Mul | ScalarBinary::Div, _, Scalar::Const(o)) if *o == 1.0 => a,
            _ => Scalar::Binary(op, Box::new(a), Box::new(b)),
        }
    }

    pub fn select(c: Scalar, a: Scalar, b: Scalar) -> Scalar {
        match c {
            Scalar::Const(v) => {
                if v != 0.0 {
                    a
                } else {
                    b
                }
            }
            c => Scalar::Select(Box::new(c), Box::new(a), Box::new(b)),
        }
    }

    /// Visits every sub-expression (pre-order).
    pub fn visit(&self, f: &mut impl FnMut(&Scalar)) {
        f(self);
        match self {
            Scalar::Const(_) | Scalar::Var(_) => {}
            Scalar::Unary(_, x) => x.visit(f),
            Scalar::Binary(_, a, b) => {
                a.visit(f);
                b.visit(f);
            }
            Scalar::Select(c, a, b) => {
                c.visit(f);
                a.visit(f);
                b.visit(f);
            }
            Scalar::Fire { arg, .. } => arg.visit(f),
        }
    }
}

/// One instantiated surrogate gradient: its name, bound parameters and derivative in `x`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SurrogateProgram {
    pub name: String,
    pub args: Vec<(String, f64)>,
    /// dS/dx with `Var::Input` standing for x.
    pub derivative: Scalar,
}

/// Where a neuron step writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Target {
    State(usize),
    Local(usize),
}

/// One instantiated neuron model: everything a scan over T needs, parameters already bound.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NeuronProgram {
    pub name: String,
    pub args: Vec<(String, String)>,
    /// State variables with their initial values; the first is the membrane potential.
    pub states: Vec<(String, f64)>,
    /// Learnable scalars (name, initial value); they become parameters of the layer.
    pub learns: Vec<(String, f64)>,
    pub locals: Vec<String>,
    /// The per-step equations, in order.
    pub steps: Vec<(Target, Scalar)>,
    /// The local holding the spikes (assigned from `fire`).
    pub spike: usize,
    pub surrogates: Vec<SurrogateProgram>,
    /// Index of the step that holds `fire`: membrane-placed attention scales the membrane before it.
    pub fire_step: usize,
}

pub struct ScalarPrinter<'a> {
    pub program: Option<&'a NeuronProgram>,
    pub expr: &'a Scalar,
}

impl fmt::Display for ScalarPrinter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, self.expr)
    }
}

impl ScalarPrinter<'_> {
    fn var_name(&self, v: Var) -> String {
        let p = self.program;
        match v {
            Var::Input => p.map_or("x", |_| "input").to_string(),
            Var::State(i) => p
                .and_then(|p| p.states.get(i))
                .map_or(format!("s{i}"), |s| s.0.clone()),
            Var::Learn(i) => p
                .and_then(|p| p.learns.get(i))
                .map_or(format!("l{i}"), |s| s.0.clone()),
            Var::Local(i) => p
                .and_then(|p| p.locals.get(i))
                .cloned()
                .unwrap_or(format!("t{i}")),
        }
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, e: &Scalar) -> fmt::Result {
        match e {
            Scalar::Const(c) => write!(f, "{}", fmt_f64(*c)),
            Scalar::Var(v) => write!(f, "{}", self.var_name(*v)),
            Scalar::Unary(ScalarUnary::Neg, x) => {
                write!(f, "-")?;
                self.write_operand(f, x)
            }
            Scalar::Unary(ScalarUnary::Not, x) => {
                write!(f, "!")?;
                self.write_operand(f, x)
            }
            Scalar::Unary(op, x) => {
                write!(f, "{}(", op.name())?;
                self.write(f, x)?;
                write!(f, ")")
            }
            Scalar::Binary(op @ (ScalarBinary::Min | ScalarBinary::Max), a, b) => {
                write!(f, "{}(", op.symbol())?;
                self.write(f, a)?;
                write!(f, ", ")?;
                self.write(f, b)?;
                write!(f, ")")
            }
            Scalar::Binary(op, a, b) => {
                self.write_operand(f, a)?;
                write!(f, " {} ", op.symbol())?;
                self.write_operand(f, b)
            }
            Scalar::Select(c, a, b) => {
                write!(f, "select(")?;
                self.write(f, c)?;
                write!(f, ", ")?;
                self.write(f, a)?;
                write!(f, ", ")?;
                self.write(f, b)?;
                write!(f, ")")
            }
            Scalar::Fire { arg, surrogate } => {
                let name = self
                    .program
                    .and_then(|p| p.surrogates.get(*surrogate))
                    .map_or(format!("#{surrogate}"), |s| s.name.clone());
                write!(f, "fire[{name}](")?;
                self.write(f, arg)?;
                write!(f, ")")
            }
        }
    }

    fn write_operand(&self, f: &mut fmt::Formatter<'_>, e: &Scalar) -> fmt::Result {
        if matches!(e, Scalar::Binary(op, ..) if !matches!(op, ScalarBinary::Min | ScalarBinary::Max))
        {
            write!(f, "(")?;
            self.write(f, e)?;
            write!(f, ")")
        } else {
            self.write(f, e)
        }
    }
}

/// Shortest round-tripping text for a constant, always with a decimal point.
pub fn fmt_f64(v: f64) -> String {
    if v.is_finite() && v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}
