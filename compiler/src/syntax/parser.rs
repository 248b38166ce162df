//! Turns source text into an [`ast::File`](super::ast::File) with the pest grammar in `snn.pest`; syntax errors
//! become [`Diagnostic`]s that say, in words, what was expected where.

use super::ast::*;
use crate::diag::{Diagnostic, ErrorCode, FileId, Span};
use pest::{
    Parser as _,
    iterators::{Pair, Pairs},
    pratt_parser::{Assoc, Op, PrattParser},
};
use std::sync::LazyLock;

#[derive(pest_derive::Parser)]
#[grammar = "syntax/snn.pest"]
struct SnnParser;

static PRATT: LazyLock<PrattParser<Rule>> = LazyLock::new(|| {
    PrattParser::new()
        .op(Op::infix(Rule::or, Assoc::Left))
        .op(Op::infix(Rule::and, Assoc::Left))
        .op(Op::infix(Rule::eq, Assoc::Left) | Op::infix(Rule::ne, Assoc::Left))
        .op(Op::infix(Rule::lt, Assoc::Left)
            | Op::infix(Rule::le, Assoc::Left)
            | Op::infix(Rule::gt, Assoc::Left)
            | Op::infix(Rule::ge, Assoc::Left))
        .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
        .op(Op::infix(Rule::mul, Assoc::Left) | Op::infix(Rule::div, Assoc::Left))
        .op(Op::prefix(Rule::neg) | Op::prefix(Rule::not))
        .op(Op::infix(Rule::pow, Assoc::Right))
});

/// Parses one file. On a syntax error returns the single diagnostic pest's error maps to.
pub fn parse(file: FileId, source: &str) -> Result<File, Diagnostic> {
    let mut pairs =
        SnnParser::parse(Rule::file, source).map_err(|e| syntax_error(file, source, e))?;
    let root = pairs.next().ok_or_else(|| {
        Diagnostic::error(ErrorCode::Syntax, "empty parse").primary(Span::new(file, 0, 0), "here")
    })?;
    Ok(Builder { file }.file(root.into_inner()))
}

/// Parses a lone expression (command-line overrides).
pub fn parse_expr(file: FileId, source: &str) -> Result<Expr, Diagnostic> {
    let mut pairs =
        SnnParser::parse(Rule::expr_only, source).map_err(|e| syntax_error(file, source, e))?;
    let expr = pairs
        .next()
        .and_then(|p| p.into_inner().next())
        .ok_or_else(|| {
            Diagnostic::error(ErrorCode::Syntax, "expected an expression")
                .primary(Span::new(file, 0, source.len()), "here")
        })?;
    Ok(Builder { file }.expr(expr))
}

fn syntax_error(file: FileId, source: &str, err: pest::error::Error<Rule>) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let (start, end) = match err.location {
        InputLocation::Pos(p) => (p, p),
        InputLocation::Span((s, e)) => (s, e),
    };
    // Point at the offending token rather than an empty position where possible.
    let end = if end == start {
        source[start..]
            .char_indices()
            .nth(1)
            .map_or(source.len(), |(i, _)| start + i)
    } else {
        end
    };
    let found = source[start..end].trim();
    let found = if found.is_empty() {
        "end of file".to_string()
    } else {
        format!("`{found}`")
    };
    let expected = match &err.variant {
        ErrorVariant::ParsingError { positives, .. } => describe_expected(positives),
        ErrorVariant::CustomError { message } => message.clone(),
    };
    let mut d = Diagnostic::error(
        ErrorCode::Syntax,
        format!("expected {expected}, found {found}"),
    )
    .primary(Span::new(file, start, end), format!("expected {expected}"));
    if let Some(help) = syntax_help(source, start) {
        d = d.help(help);
    }
    d
}

/// A targeted hint for the most common slips, judged from the text before the error.
fn syntax_help(source: &str, pos: usize) -> Option<String> {
    let before = source[..pos].trim_end();
    let word: String = source[pos..]
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    const KEYWORDS: [&str; 10] = [
        "require", "import", "module", "let", "repeat", "state", "learn", "train", "true", "false",
    ];
    if word == "import" && !before.is_empty() {
        return Some("imports go at the top of the file, before any definition".into());
    }
    if KEYWORDS.contains(&word.as_str())
        && (before.ends_with("let") || before.ends_with('(') || before.ends_with(','))
    {
        return Some(format!(
            "`{word}` is a keyword and cannot be used as a name"
        ));
    }
    let after_operand =
        before.ends_with(')') || before.chars().last().is_some_and(|c| c.is_alphanumeric());
    if after_operand
        && source[pos..]
            .trim_start()
            .starts_with(|c: char| c.is_alphabetic())
        && !before.ends_with("->")
    {
        return Some("stages of a dataflow are joined with `->`".into());
    }
    None
}

fn describe_expected(rules: &[Rule]) -> String {
    let mut words: Vec<&str> = rules.iter().map(|r| describe_rule(*r)).collect();
    words.sort_unstable();
    words.dedup();
    match words.as_slice() {
        [] => "something else".into(),
        [one] => (*one).into(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Human words for grammar rules, used in "expected ..." messages.
pub fn describe_rule(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of file",
        Rule::expr_only => "an expression",
        Rule::ident | Rule::path_seg | Rule::name | Rule::value_ref | Rule::dotted | Rule::path => {
            "a name"
        }
        Rule::expr
        | Rule::primary
        | Rule::quantity
        | Rule::number
        | Rule::call_expr
        | Rule::tuple
        | Rule::boolean
        | Rule::string => "an expression",
        Rule::neuron_def
        | Rule::surrogate_def
        | Rule::attention_def
        | Rule::block_def
        | Rule::model_def
        | Rule::item => "a definition (`neuron`, `surrogate`, `attention`, `block` or `model`)",
        Rule::import => "`import`",
        Rule::module_decl => "`module`",
        Rule::params | Rule::param => "a parameter list",
        Rule::type_name => "a type",
        Rule::state_stmt | Rule::learn_stmt | Rule::assign_stmt | Rule::neuron_stmt => {
            "a neuron statement (`state`, `learn` or an assignment)"
        }
        Rule::input_stmt => "`input`",
        Rule::require_stmt => "`require`",
        Rule::train_section => "`train`",
        Rule::setting => "a setting (`name = value`)",
        Rule::let_stmt | Rule::flow_stmt | Rule::body_stmt | Rule::model_stmt => "a statement",
        Rule::flow | Rule::flow_sum | Rule::flow_term => "a dataflow",
        Rule::stage | Rule::repeat_stage | Rule::call => "a layer or block",
        Rule::args | Rule::arg | Rule::named_arg => "an argument",
        Rule::infix
        | Rule::add
        | Rule::sub
        | Rule::mul
        | Rule::div
        | Rule::pow
        | Rule::lt
        | Rule::le
        | Rule::gt
        | Rule::ge
        | Rule::eq
        | Rule::ne
        | Rule::and
        | Rule::or => "an operator",
        Rule::prefix | Rule::neg | Rule::not => "an operator",
        Rule::unit => "a unit",
        _ => "a token",
    }
}

struct Builder {
    file: FileId,
}

impl Builder {
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        Span::new(self.file, s.start(), s.end())
    }

    fn ident(&self, pair: Pair<Rule>) -> Ident {
        Ident {
            name: pair.as_str().to_string(),
            span: self.span(&pair),
        }
    }

    fn path(&self, pair: Pair<Rule>) -> Path {
        let span = self.span(&pair);
        Path {
            segments: pair.into_inner().map(|p| self.ident(p)).collect(),
            span,
        }
    }

    fn file(&self, pairs: Pairs<Rule>) -> File {
        let mut file = File {
            module: None,
            imports: Vec::new(),
            items: Vec::new(),
        };
        for pair in pairs {
            match pair.as_rule() {
                Rule::module_decl => file.module = pair.into_inner().next().map(|p| self.path(p)),
                Rule::import => file.imports.push(self.import(pair)),
                Rule::neuron_def => file.items.push(Item::Neuron(self.neuron(pair))),
                Rule::surrogate_def => {
                    let (name, params, derivative) = self.named_expr_def(pair);
                    file.items.push(Item::Surrogate(SurrogateDef {
                        name,
                        params,
                        derivative,
                    }));
                }
                Rule::attention_def => {
                    let (name, params, body) = self.named_expr_def(pair);
                    file.items
                        .push(Item::Attention(AttentionDef { name, params, body }));
                }
                Rule::block_def => file.items.push(Item::Block(self.block(pair))),
                Rule::model_def => file.items.push(Item::Model(self.model(pair))),
                _ => {}
            }
        }
        file
    }

    fn import(&self, pair: Pair<Rule>) -> Import {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let path = inner.next().map(|p| self.path(p)).unwrap_or(Path {
            segments: vec![],
            span,
        });
        let names = match inner.next().and_then(|tail| tail.into_inner().next()) {
            Some(list) if list.as_rule() == Rule::import_list => {
                ImportNames::Some(list.into_inner().map(|p| self.ident(p)).collect())
            }
            _ => ImportNames::All,
        };
        Import { path, names, span }
    }

    fn params(&self, pair: Pair<Rule>) -> Vec<Param> {
        pair.into_inner()
            .map(|param| {
                let mut param_inner = param.into_inner();
                let name = self.ident(param_inner.next().expect("grammar: param has a name"));
                let mut ty = None;
                let mut default = None;
                for p in param_inner {
                    match p.as_rule() {
                        Rule::type_name => ty = p.into_inner().next().map(|t| self.ident(t)),
                        Rule::expr => default = Some(self.expr(p)),
                        _ => {}
                    }
                }
                Param { name, ty, default }
            })
            .collect()
    }

    /// Splits `kw Name(params)? ...rest` into its name, parameters and remaining pairs.
    fn header<'a>(&self, pair: Pair<'a, Rule>) -> (Ident, Vec<Param>, Vec<Pair<'a, Rule>>) {
        let mut inner = pair.into_inner();
        let name = self.ident(inner.next().expect("grammar: definition has a name"));
        let mut params = Vec::new();
        let mut rest = Vec::new();
        for p in inner {
            if p.as_rule() == Rule::params {
                params = self.params(p);
            } else {
                rest.push(p);
            }
        }
        (name, params, rest)
    }

    fn named_expr_def(&self, pair: Pair<Rule>) -> (Ident, Vec<Param>, Expr) {
        let span = self.span(&pair);
        let (name, params, rest) = self.header(pair);
        let body = rest
            .into_iter()
            .next()
            .map(|p| self.expr(p))
            .unwrap_or(Expr {
                kind: ExprKind::Bool(false),
                span,
            });
        (name, params, body)
    }

    fn neuron(&self, pair: Pair<Rule>) -> NeuronDef {
        let (name, params, rest) = self.header(pair);
        let body = rest
            .into_iter()
            .map(|stmt| {
                if stmt.as_rule() == Rule::require_stmt {
                    return NeuronStmt::Require(self.require(stmt));
                }
                let rule = stmt.as_rule();
                let mut inner = stmt.into_inner();
                let target = self.ident(inner.next().expect("grammar: statement has a name"));
                let value = self.expr(inner.next().expect("grammar: statement has a value"));
                match rule {
                    Rule::state_stmt => NeuronStmt::State {
                        name: target,
                        init: value,
                    },
                    Rule::learn_stmt => NeuronStmt::Learn {
                        name: target,
                        init: value,
                    },
                    _ => NeuronStmt::Assign { target, value },
                }
            })
            .collect();
        NeuronDef { name, params, body }
    }

    fn block(&self, pair: Pair<Rule>) -> BlockDef {
        let span = self.span(&pair);
        let (name, params, rest) = self.header(pair);
        let body = rest.into_iter().map(|p| self.body_stmt(p)).collect();
        BlockDef {
            name,
            params,
            body,
            span,
        }
    }

    fn model(&self, pair: Pair<Rule>) -> ModelDef {
        let span = self.span(&pair);
        let (name, params, rest) = self.header(pair);
        let mut model = ModelDef {
            name,
            params,
            inputs: vec![],
            body: vec![],
            train: None,
            span,
        };
        for p in rest {
            match p.as_rule() {
                Rule::input_stmt => {
                    let mut inner = p.into_inner();
                    let name = self.ident(inner.next().expect("grammar: input has a name"));
                    let source = self.call(inner.next().expect("grammar: input has a source"));
                    model.inputs.push(InputDecl { name, source });
                }
                Rule::train_section => {
                    let span = self.span(&p);
                    let settings = p
                        .into_inner()
                        .map(|s| {
                            let mut inner = s.into_inner();
                            let name =
                                self.ident(inner.next().expect("grammar: setting has a name"));
                            let value =
                                self.expr(inner.next().expect("grammar: setting has a value"));
                            Setting { name, value }
                        })
                        .collect();
                    model.train = Some(TrainSection { settings, span });
                }
                _ => model.body.push(self.body_stmt(p)),
            }
        }
        model
    }

    fn require(&self, pair: Pair<Rule>) -> Require {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let cond = self.expr(inner.next().expect("grammar: require has a condition"));
        let message = inner
            .next()
            .map(|s| unescape(s.into_inner().next().map_or("", |p| p.as_str())));
        Require {
            cond,
            message,
            span,
        }
    }

    fn body_stmt(&self, pair: Pair<Rule>) -> BodyStmt {
        match pair.as_rule() {
            Rule::require_stmt => BodyStmt::Require(self.require(pair)),
            Rule::let_stmt => {
                let mut inner = pair.into_inner();
                let name = self.ident(inner.next().expect("grammar: let has a name"));
                let flow = self.flow(inner.next().expect("grammar: let has a flow"));
                BodyStmt::Let { name, flow }
            }
            _ => BodyStmt::Flow(
                self.flow(pair.into_inner().next().expect("grammar: flow statement")),
            ),
        }
    }

    fn flow(&self, pair: Pair<Rule>) -> Flow {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let sum = inner.next().expect("grammar: flow has a source");
        let sources = sum
            .into_inner()
            .map(|t| match t.as_rule() {
                Rule::flow => FlowTerm::Nested(Box::new(self.flow(t))),
                _ => {
                    FlowTerm::Value(self.ident(t.into_inner().next().expect("grammar: value name")))
                }
            })
            .collect();
        let stages = inner
            .map(|s| match s.as_rule() {
                Rule::repeat_stage => {
                    let span = self.span(&s);
                    let mut parts = s.into_inner();
                    let count = self.expr(parts.next().expect("grammar: repeat count"));
                    Stage::Repeat {
                        count,
                        body: parts.map(|c| self.call(c)).collect(),
                        span,
                    }
                }
                _ => Stage::Call(self.call(s)),
            })
            .collect();
        Flow {
            sources,
            stages,
            span,
        }
    }

    fn call(&self, pair: Pair<Rule>) -> Call {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let callee = self.path(inner.next().expect("grammar: call has a callee"));
        let (args, parens) = match inner.next() {
            Some(args) => (self.args(args), true),
            None => (Vec::new(), false),
        };
        Call {
            callee,
            args,
            parens,
            span,
        }
    }

    fn args(&self, pair: Pair<Rule>) -> Vec<Arg> {
        pair.into_inner()
            .map(|a| match a.as_rule() {
                Rule::named_arg => {
                    let mut inner = a.into_inner();
                    let name = self.ident(inner.next().expect("grammar: named arg"));
                    let value = self.expr(inner.next().expect("grammar: named arg value"));
                    Arg {
                        name: Some(name),
                        value,
                    }
                }
                _ => Arg {
                    name: None,
                    value: self.expr(a),
                },
            })
            .collect()
    }

    fn expr(&self, pair: Pair<Rule>) -> Expr {
        PRATT
            .map_primary(|p| self.primary(p))
            .map_prefix(|op, operand| {
                let span = self.span(&op).to(operand.span);
                let op = if op.as_rule() == Rule::neg {
                    UnOp::Neg
                } else {
                    UnOp::Not
                };
                Expr {
                    kind: ExprKind::Unary {
                        op,
                        operand: Box::new(operand),
                    },
                    span,
                }
            })
            .map_infix(|lhs, op, rhs| {
                let op = match op.as_rule() {
                    Rule::add => BinOp::Add,
                    Rule::sub => BinOp::Sub,
                    Rule::mul => BinOp::Mul,
                    Rule::div => BinOp::Div,
                    Rule::pow => BinOp::Pow,
                    Rule::lt => BinOp::Lt,
                    Rule::le => BinOp::Le,
                    Rule::gt => BinOp::Gt,
                    Rule::ge => BinOp::Ge,
                    Rule::eq => BinOp::Eq,
                    Rule::ne => BinOp::Ne,
                    Rule::and => BinOp::And,
                    _ => BinOp::Or,
                };
                let span = lhs.span.to(rhs.span);
                Expr {
                    kind: ExprKind::Binary {
                        op,
                        lhs: Box::new(lhs),
                        rhs: Box::new(rhs),
                    },
                    span,
                }
            })
            .parse(pair.into_inner())
    }

    fn primary(&self, pair: Pair<Rule>) -> Expr {
        let span = self.span(&pair);
        let kind = match pair.as_rule() {
            Rule::quantity => {
                let mut inner = pair.into_inner();
                let number = inner.next().map(|n| n.as_str()).unwrap_or("0");
                let is_int = !number.contains(['.', 'e', 'E']);
                // The grammar guarantees digits; an overflow to inf is caught by sema's range checks.
                let value = number.parse::<f64>().unwrap_or(f64::INFINITY);
                let unit = inner.next().map(|u| u.as_str().to_string());
                ExprKind::Number {
                    value,
                    is_int,
                    unit,
                }
            }
            Rule::boolean => ExprKind::Bool(pair.as_str() == "true"),
            Rule::string => ExprKind::Str(unescape(
                pair.into_inner().next().map_or("", |p| p.as_str()),
            )),
            Rule::call_expr => {
                let mut inner = pair.into_inner();
                let callee = self.path(inner.next().expect("grammar: call has a callee"));
                let args = inner.next().map(|a| self.args(a)).unwrap_or_default();
                ExprKind::Call(Call {
                    callee,
                    args,
                    parens: true,
                    span,
                })
            }
            Rule::name => {
                ExprKind::Name(self.path(pair.into_inner().next().expect("grammar: name path")))
            }
            Rule::tuple => ExprKind::Tuple(pair.into_inner().map(|p| self.expr(p)).collect()),
            Rule::expr => return self.expr(pair),
            _ => ExprKind::Bool(false),
        };
        Expr { kind, span }
    }
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}
