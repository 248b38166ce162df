//! The abstract syntax tree of one `.snn` file, with a span on every node a diagnostic can
//! point at. Pure data: no name resolution and no evaluation happen here.

use crate::diag::Span;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Ident {
    pub name: String,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, Serialize)]
pub struct File {
    pub module: Option<Path>,
    pub imports: Vec<Import>,
    pub items: Vec<Item>,
}

/// A dotted name such as `std.neurons` or `pool.avg`.
#[derive(Clone, Debug, Serialize)]
pub struct Path {
    pub segments: Vec<Ident>,
    #[serde(skip)]
    pub span: Span,
}

impl Path {
    pub fn dotted(&self) -> String {
        self.segments
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(".")
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Import {
    pub path: Path,
    pub names: ImportNames,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, Serialize)]
pub enum ImportNames {
    /// `import std.neurons` or `import std.neurons.*`: every definition.
    All,
    /// `import std.neurons.{LIF, PLIF}`.
    Some(Vec<Ident>),
}

#[derive(Clone, Debug, Serialize)]
pub enum Item {
    Neuron(NeuronDef),
    Surrogate(SurrogateDef),
    Attention(AttentionDef),
    Block(BlockDef),
    Model(ModelDef),
}

impl Item {
    pub fn name(&self) -> &Ident {
        match self {
            Item::Neuron(d) => &d.name,
            Item::Surrogate(d) => &d.name,
            Item::Attention(d) => &d.name,
            Item::Block(d) => &d.name,
            Item::Model(d) => &d.name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Item::Neuron(_) => "neuron",
            Item::Surrogate(_) => "surrogate",
            Item::Attention(_) => "attention",
            Item::Block(_) => "block",
            Item::Model(_) => "model",
        }
    }

    pub fn params(&self) -> &[Param] {
        match self {
            Item::Neuron(d) => &d.params,
            Item::Surrogate(d) => &d.params,
            Item::Attention(d) => &d.params,
            Item::Block(d) => &d.params,
            Item::Model(d) => &d.params,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Param {
    pub name: Ident,
    pub ty: Option<Ident>,
    pub default: Option<Expr>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NeuronDef {
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Vec<NeuronStmt>,
}

#[derive(Clone, Debug, Serialize)]
pub enum NeuronStmt {
    /// `state v = init`: carried from one time step to the next.
    State {
        name: Ident,
        init: Expr,
    },
    /// `learn w = init`: a trainable scalar of the neuron (one per layer), e.g. PLIF's time constant.
    Learn {
        name: Ident,
        init: Expr,
    },
    /// `name = expr`: updates a state or defines a per-step local.
    Assign {
        target: Ident,
        value: Expr,
    },
    Require(Require),
}

/// `require cond, "message"`: a check on parameter values, evaluated when the definition is used.
#[derive(Clone, Debug, Serialize)]
pub struct Require {
    pub cond: Expr,
    pub message: Option<String>,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, Serialize)]
pub struct SurrogateDef {
    pub name: Ident,
    pub params: Vec<Param>,
    /// dS/du as a function of the implicit argument `x` (the value passed to `fire`).
    pub derivative: Expr,
}

#[derive(Clone, Debug, Serialize)]
pub struct AttentionDef {
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Expr,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlockDef {
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Vec<BodyStmt>,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelDef {
    pub name: Ident,
    pub params: Vec<Param>,
    pub inputs: Vec<InputDecl>,
    pub body: Vec<BodyStmt>,
    pub train: Option<TrainSection>,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, Serialize)]
pub struct InputDecl {
    pub name: Ident,
    pub source: Call,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrainSection {
    pub settings: Vec<Setting>,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, Serialize)]
pub struct Setting {
    pub name: Ident,
    pub value: Expr,
}

#[derive(Clone, Debug, Serialize)]
pub enum BodyStmt {
    Require(Require),
    Let { name: Ident, flow: Flow },
    Flow(Flow),
}

/// `a + b -> stage -> stage`: a source (sum of values) pushed through stages.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    pub sources: Vec<FlowTerm>,
    pub stages: Vec<Stage>,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, Serialize)]
pub enum FlowTerm {
    Value(Ident),
    Nested(Box<Flow>),
}

#[derive(Clone, Debug, Serialize)]
pub enum Stage {
    Call(Call),
    Repeat {
        count: Expr,
        body: Vec<Call>,
        #[serde(skip)]
        span: Span,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct Call {
    pub callee: Path,
    pub args: Vec<Arg>,
    /// Whether parentheses were written (`LIF` vs `LIF()`); both mean the same call.
    pub parens: bool,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, Serialize)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Pow => "^",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::And => "&&",
            BinOp::Or => "||",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Debug, Serialize)]
pub struct Expr {
    pub kind: ExprKind,
    #[serde(skip)]
    pub span: Span,
}

#[derive(Clone, Debug, Serialize)]
pub enum ExprKind {
    /// A number with an optional unit suffix (`25ms`); `is_int` when written without `.`/exponent.
    Number {
        value: f64,
        is_int: bool,
        unit: Option<String>,
    },
    Bool(bool),
    Str(String),
    Name(Path),
    Call(Call),
    Tuple(Vec<Expr>),
    Unary {
        op: UnOp,
        operand: Box<Expr>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
}
