//! Elaboration: expands a model (its inputs, dataflow, blocks, repeats, neurons and attention)
//! into the typed graph IR, inferring every shape and reporting errors at the stage that caused
//! them. One error per statement; elaboration continues so a run reports as many as it can.

use super::loader::{DefId, Program};
use super::neuron::{check_requires, instantiate_neuron};
use super::train::check_train;
use super::value::*;
use crate::diag::{Diagnostic, Diagnostics, ErrorCode, FileId, Span};
use crate::ir::infer::{infer_type, param_layout};
use crate::ir::*;
use crate::syntax::ast::{self, BodyStmt, Flow, FlowTerm, Stage};
use std::collections::HashMap;

/// A dataflow value during elaboration; `None` after an error was reported for it.
type Flowing = Option<ValueId>;

/// Builtin layers usable as stages.
pub const LAYERS: &[&str] = &[
    "conv",
    "linear",
    "pool.avg",
    "pool.max",
    "bn",
    "dropout",
    "flatten",
    "attend",
    "relu",
    "sigmoid",
    "identity",
    "readout.rate",
    "readout.mean",
    "readout.membrane",
];

struct Scope {
    file: FileId,
    consts: HashMap<String, Value>,
    values: HashMap<String, (Flowing, Span, bool)>,
}

pub struct Elaborator<'p> {
    program: &'p Program,
    pub diags: Diagnostics,
    graph: Graph,
    counters: HashMap<String, usize>,
    /// Blocks being expanded, to catch recursion.
    block_stack: Vec<DefId>,
    readouts: Vec<ValueId>,
    /// Set while an `attend(...)` expands: the module every node created belongs to.
    attention_group: Option<String>,
}

impl<'p> Elaborator<'p> {
    pub fn new(program: &'p Program) -> Self {
        Elaborator {
            program,
            diags: Diagnostics::default(),
            graph: Graph::default(),
            counters: HashMap::new(),
            block_stack: Vec::new(),
            readouts: Vec::new(),
            attention_group: None,
        }
    }

    /// Elaborates model `def` with `overrides` (name → expression source already evaluated).
    pub fn model(
        mut self,
        def: DefId,
        overrides: &[(String, Value)],
    ) -> (Option<Graph>, Diagnostics) {
        let Some(ast::Item::Model(model)) = self.program.item(def) else {
            return (None, self.diags);
        };
        self.graph.name = model.name.name.clone();
        let consts = match self.model_args(def, model, overrides) {
            Ok(c) => c,
            Err(d) => {
                self.diags.push(d);
                return (None, self.diags);
            }
        };
        self.graph.model_args = model
            .params
            .iter()
            .filter_map(|p| {
                consts
                    .get(&p.name.name)
                    .map(|v| (p.name.name.clone(), v.to_string()))
            })
            .collect();
        let mut scope = Scope {
            file: def.file,
            consts,
            values: HashMap::new(),
        };
        for input in &model.inputs {
            let v = self.input(&scope, input);
            self.declare(&mut scope, &input.name, v);
        }
        if model.inputs.is_empty() {
            self.diags.push(
                Diagnostic::error(ErrorCode::Model, format!("model `{}` has no input", model.name.name))
                    .primary(model.name.span, "declared here")
                    .help("declare one, e.g. `input x: events(channels = 2, height = 34, width = 34, T = T)`"),
            );
        }
        let requires = model.body.iter().filter_map(|s| {
            if let BodyStmt::Require(r) = s {
                Some(r)
            } else {
                None
            }
        });
        let env = ConstEnv {
            program: self.program,
            file: def.file,
            locals: &scope.consts,
        };
        if let Err(d) = check_requires(
            requires,
            &env,
            model.name.span,
            &format!("model `{}`", model.name.name),
        ) {
            self.diags.push(d);
        }
        let output = self.body(&mut scope, &model.body, model.span, "model");
        if let Some(train) = &model.train {
            let env = ConstEnv {
                program: self.program,
                file: def.file,
                locals: &scope.consts,
            };
            match check_train(train, &env) {
                Ok(settings) => self.graph.train = settings,
                Err(ds) => ds.into_iter().for_each(|d| self.diags.push(d)),
            }
        }
        self.warn_unused(&scope);
        match output {
            Some(out) if self.readouts.contains(&out) => self.graph.outputs.push(out),
            Some(out) => {
                let span = self.graph.node(out).span.unwrap_or(model.name.span);
                self.diags.push(
                    Diagnostic::error(ErrorCode::Model, format!("model `{}` must end in a readout", model.name.name))
                        .primary(span, format!("the model's output is `{}`, not a readout", self.graph.node(out).name))
                        .help("end the last dataflow with `-> readout.rate` (mean spikes over T) or `-> readout.membrane(LIF)`"),
                );
            }
            None => {}
        }
        if self.diags.has_errors() {
            return (None, self.diags);
        }
        (Some(self.graph), self.diags)
    }

    fn model_args(
        &self,
        def: DefId,
        model: &ast::ModelDef,
        overrides: &[(String, Value)],
    ) -> Result<HashMap<String, Value>, Diagnostic> {
        let specs = user_specs(&model.params)?;
        for (name, _) in overrides {
            if !specs.iter().any(|s| s.name == name) {
                return Err(Diagnostic::error(
                    ErrorCode::Arity,
                    format!("model `{}` has no parameter `{name}`", model.name.name),
                )
                .primary(model.name.span, "model declared here")
                .suggest(name, specs.iter().map(|s| s.name)));
            }
        }
        let mut locals = HashMap::new();
        for spec in &specs {
            let v = match (
                overrides.iter().find(|(n, _)| n == spec.name),
                &spec.default,
            ) {
                (Some((_, v)), _) => {
                    spec.ty
                        .coerce(v.clone(), model.name.span, &format!("`{}`", spec.name))?
                }
                (None, DefaultValue::Expr(e)) => {
                    let env = ConstEnv {
                        program: self.program,
                        file: def.file,
                        locals: &locals,
                    };
                    spec.ty
                        .coerce(env.eval(e)?, e.span, &format!("`{}`", spec.name))?
                }
                (None, _) => {
                    return Err(Diagnostic::error(
                        ErrorCode::Arity,
                        format!("model parameter `{}` has no default", spec.name),
                    )
                    .primary(model.name.span, "in this model")
                    .help(format!(
                        "give it a default, or pass `--set {}=<value>`",
                        spec.name
                    )));
                }
            };
            locals.insert(spec.name.to_string(), v);
        }
        Ok(locals)
    }

    fn declare(&mut self, scope: &mut Scope, name: &ast::Ident, v: Flowing) {
        if let Some((_, first, _)) = scope.values.get(&name.name) {
            self.diags.push(
                Diagnostic::error(
                    ErrorCode::Duplicate,
                    format!("`{}` is already bound", name.name),
                )
                .primary(name.span, "bound again here")
                .secondary(*first, "first bound here")
                .help("values are immutable: pick a new name"),
            );
            return;
        }
        if scope.consts.contains_key(&name.name) {
            self.diags.push(
                Diagnostic::error(
                    ErrorCode::Duplicate,
                    format!("`{}` is already a parameter", name.name),
                )
                .primary(name.span, "shadows a parameter")
                .help("pick a different name for the value"),
            );
            return;
        }
        scope
            .values
            .insert(name.name.clone(), (v, name.span, false));
    }

    fn warn_unused(&mut self, scope: &Scope) {
        let mut unused: Vec<_> = scope
            .values
            .iter()
            .filter(|(n, (_, _, used))| !used && *n != "input")
            .collect();
        unused.sort_by_key(|(_, (_, s, _))| s.start);
        for (name, (_, span, _)) in unused {
            self.diags.push(
                Diagnostic::warning(ErrorCode::Model, format!("value `{name}` is never used"))
                    .primary(*span, "bound here")
                    .help("use it in a dataflow, or remove the binding"),
            );
        }
    }

    /// Runs the statements of a block or model body; returns the value of the final dataflow.
    fn body(&mut self, scope: &mut Scope, body: &[BodyStmt], span: Span, what: &str) -> Flowing {
        let mut last: Option<(Flowing, Span)> = None;
        for stmt in body {
            match stmt {
                BodyStmt::Require(_) => {}
                BodyStmt::Let { name, flow } => {
                    let v = self.flow(scope, flow, Some(&name.name));
                    self.declare(scope, name, v);
                }
                BodyStmt::Flow(flow) => {
                    let v = self.flow(scope, flow, None);
                    if let Some((_, previous)) = last {
                        self.diags.push(
                            Diagnostic::error(ErrorCode::Model, format!("a {what} has one output, but this dataflow's value is discarded"))
                                .primary(previous, "value of this dataflow is never used")
                                .help("bind it with `let name = ...` or connect it to the output"),
                        );
                    }
                    last = Some((v, flow.span));
                }
            }
        }
        match last {
            Some((v, _)) => v,
            None => {
                self.diags.push(
                    Diagnostic::error(ErrorCode::Model, format!("this {what} produces no output"))
                        .primary(span, "no final dataflow")
                        .help("end the body with a dataflow such as `input -> conv(64, 3) -> bn`"),
                );
                None
            }
        }
    }

    fn value_ref(
        &mut self,
        scope: &mut Scope,
        name: &ast::Ident,
        binding: Option<&str>,
    ) -> Flowing {
        if let Some(entry) = scope.values.get_mut(&name.name) {
            entry.2 = true;
            return entry.0;
        }
        if binding == Some(name.name.as_str()) {
            self.diags.push(
                Diagnostic::error(
                    ErrorCode::Cycle,
                    format!("`{}` is defined in terms of itself", name.name),
                )
                .primary(name.span, "used in its own definition")
                .help("dataflow is acyclic; recurrence over time belongs in a neuron's `state`"),
            );
            return None;
        }
        let mut names: Vec<&str> = scope.values.keys().map(String::as_str).collect();
        names.extend(scope.consts.keys().map(String::as_str));
        let mut d = unknown_name(&name.name, name.span, names);
        let is_stage = LAYERS.contains(&name.name.as_str())
            || self
                .program
                .scope(scope.file)
                .is_some_and(|s| s.contains_key(&name.name));
        if is_stage {
            d = Diagnostic::error(
                ErrorCode::UnknownName,
                format!("`{}` is a layer, not a value", name.name),
            )
            .primary(name.span, "a dataflow cannot start from a layer")
            .help(format!("did you forget `->` before `{}`?", name.name));
        } else if scope.consts.contains_key(&name.name) {
            d = Diagnostic::error(
                ErrorCode::Type,
                format!("`{}` is a parameter, not a tensor", name.name),
            )
            .primary(name.span, "a dataflow starts from a tensor value")
            .help("start from an input or a `let` value, e.g. `input -> ...` in a block");
        }
        self.diags.push(d);
        None
    }

    fn flow(&mut self, scope: &mut Scope, flow: &Flow, binding: Option<&str>) -> Flowing {
        let mut sources = Vec::new();
        for term in &flow.sources {
            let v = match term {
                FlowTerm::Value(name) => self.value_ref(scope, name, binding),
                FlowTerm::Nested(inner) => self.flow(scope, inner, binding),
            };
            sources.push(v);
        }
        let mut current = sources.first().copied().flatten();
        if sources.iter().any(Option::is_none) {
            current = None;
        } else if sources.len() > 1 {
            let term_span = |t: &FlowTerm| match t {
                FlowTerm::Value(name) => name.span,
                FlowTerm::Nested(inner) => inner.span,
            };
            let sum_span = match (flow.sources.first(), flow.sources.last()) {
                (Some(a), Some(b)) => term_span(a).to(term_span(b)),
                _ => flow.span,
            };
            let mut acc = sources[0];
            for s in &sources[1..] {
                acc = match (acc, s) {
                    (Some(a), Some(b)) => self.push(
                        Op::Binary(BinaryOp::Add),
                        vec![a, *b],
                        "add",
                        sum_span,
                        &[],
                        false,
                    ),
                    _ => None,
                };
            }
            current = acc;
        }
        for stage in &flow.stages {
            let Some(x) = current else { break };
            if self.readouts.contains(&x) {
                let span = match stage {
                    Stage::Call(c) => c.span,
                    Stage::Repeat { span, .. } => *span,
                };
                self.diags.push(
                    Diagnostic::error(ErrorCode::Model, "nothing can follow a readout")
                        .primary(span, "after the readout")
                        .help("the readout is the model's output: move this stage before it"),
                );
                return None;
            }
            current = match stage {
                Stage::Call(call) => self.stage(scope, call, x),
                Stage::Repeat { count, body, span } => self.repeat(scope, count, body, *span, x),
            };
        }
        current
    }

    fn repeat(
        &mut self,
        scope: &mut Scope,
        count: &ast::Expr,
        body: &[ast::Call],
        span: Span,
        x: ValueId,
    ) -> Flowing {
        let env = ConstEnv {
            program: self.program,
            file: scope.file,
            locals: &scope.consts,
        };
        let n = match env
            .eval(count)
            .and_then(|v| Ty::Int.coerce(v, count.span, "a repeat count"))
        {
            Ok(Value::Int(n)) if n >= 0 => n,
            Ok(v) => {
                self.diags.push(
                    Diagnostic::error(
                        ErrorCode::InvalidValue,
                        format!("a repeat count must be zero or more, found {v}"),
                    )
                    .primary(count.span, "negative count"),
                );
                return None;
            }
            Err(d) => {
                self.diags.push(d);
                return None;
            }
        };
        if n > 10_000 {
            self.diags.push(
                Diagnostic::error(
                    ErrorCode::InvalidValue,
                    format!("repeat count {n} is too large"),
                )
                .primary(span, "at most 10000"),
            );
            return None;
        }
        let mut current = Some(x);
        for _ in 0..n {
            for call in body {
                let v = current?;
                current = self.stage(scope, call, v);
            }
        }
        current
    }

    fn consts_env<'a>(&'a self, scope: &'a Scope) -> ConstEnv<'a> {
        ConstEnv {
            program: self.program,
            file: scope.file,
            locals: &scope.consts,
        }
    }

    /// Applies one stage (builtin layer, block, neuron, attention) to `x`.
    fn stage(&mut self, scope: &mut Scope, call: &ast::Call, x: ValueId) -> Flowing {
        let name = call.callee.dotted();
        let result = if let Some(v) = scope.consts.get(&name).cloned() {
            if call.args.is_empty() {
                self.stage_value(call, v, x)
            } else {
                // `cell(v_th = 0.5)`: reconfigure the parameter's neuron/block with these arguments.
                let as_expr = ast::Expr {
                    kind: ast::ExprKind::Call(call.clone()),
                    span: call.span,
                };
                self.consts_env(scope)
                    .eval(&as_expr)
                    .and_then(|v| self.stage_value(call, v, x))
            }
        } else if self
            .program
            .scope(scope.file)
            .is_some_and(|s| s.contains_key(&name))
        {
            let as_expr = ast::Expr {
                kind: ast::ExprKind::Call(call.clone()),
                span: call.span,
            };
            self.consts_env(scope)
                .eval(&as_expr)
                .and_then(|v| self.stage_value(call, v, x))
        } else if LAYERS.contains(&name.as_str()) {
            self.layer(scope, call, &name, x)
        } else {
            let mut candidates: Vec<&str> = LAYERS.to_vec();
            candidates.extend(scope.consts.keys().map(String::as_str));
            if let Some(s) = self.program.scope(scope.file) {
                candidates.extend(s.keys().map(String::as_str));
            }
            let mut d = unknown_name(&name, call.callee.span, candidates);
            if scope.values.contains_key(&name) {
                d = Diagnostic::error(ErrorCode::Type, format!("`{name}` is a tensor value, not a layer"))
                    .primary(call.callee.span, "used as a stage")
                    .help(format!("to combine values write `{name} + other`; to start a dataflow from it, put it first"));
            } else if d.help.is_none() {
                d = d.note(format!("builtin layers: {}", LAYERS.join(", ")));
            }
            Err(d)
        };
        match result {
            Ok(v) => v,
            Err(d) => {
                self.diags.push(d);
                None
            }
        }
    }

    fn stage_value(
        &mut self,
        call: &ast::Call,
        v: Value,
        x: ValueId,
    ) -> Result<Flowing, Diagnostic> {
        match v {
            Value::Neuron(n) => Ok(self.neuron(&n, x, None, ScanEmit::Spikes, call.span)),
            Value::Block(b) => Ok(self.block(&b, x, call.span)),
            Value::Attention(a) => Ok(self.attend(&a, x, false, call.span)?.0),
            other => Err(Diagnostic::error(
                ErrorCode::Type,
                format!(
                    "{} {} cannot be used as a layer",
                    article(other.kind()),
                    other.kind()
                ),
            )
            .primary(
                call.span,
                format!(
                    "`{}` is {} {}",
                    call.callee.dotted(),
                    article(other.kind()),
                    other.kind()
                ),
            )
            .help("stages are layers, blocks, neurons or attention modules")),
        }
    }

    fn fresh_name(&mut self, base: &str) -> String {
        let n = self.counters.entry(base.to_string()).or_insert(0);
        let name = format!("{base}{n}");
        *n += 1;
        name
    }

    /// Adds a node with inferred type and fresh parameters; reports shape errors at `span`.
    fn push(
        &mut self,
        op: Op,
        inputs: Vec<ValueId>,
        base: &str,
        span: Span,
        shared: &[ParamId],
        bias: bool,
    ) -> Flowing {
        self.push_checked(op, inputs, base, span, shared, bias)
            .map_err(|d| self.diags.push(d))
            .ok()
    }

    fn push_checked(
        &mut self,
        op: Op,
        inputs: Vec<ValueId>,
        base: &str,
        span: Span,
        shared: &[ParamId],
        bias: bool,
    ) -> Result<ValueId, Diagnostic> {
        let types: Vec<TensorType> = inputs.iter().map(|v| self.graph.ty(*v).clone()).collect();
        let types: Vec<&TensorType> = types.iter().collect();
        let ty = infer_type(&op, &types).map_err(|e| {
            let mut d = Diagnostic::error(
                if e.message.contains("attention") {
                    ErrorCode::AttentionDim
                } else {
                    ErrorCode::Shape
                },
                e.message.clone(),
            )
            .primary(span, "in this stage");
            if let Some(h) = e.help {
                d = d.help(h);
            }
            d
        })?;
        let name = self.fresh_name(base);
        let params = if shared.is_empty() {
            param_layout(&op, &types, bias)
                .into_iter()
                .map(|(suffix, shape, role, init)| {
                    self.graph.add_param(ParamDecl {
                        name: format!("{name}.{suffix}"),
                        shape,
                        role,
                        init,
                    })
                })
                .collect()
        } else {
            shared.to_vec()
        };
        Ok(self.graph.add_node(Node {
            op,
            inputs,
            params,
            ty,
            name,
            span: Some(span),
            group: self.attention_group.clone(),
        }))
    }

    fn input(&mut self, scope: &Scope, input: &ast::InputDecl) -> Flowing {
        let kind = input.source.callee.dotted();
        let span = input.source.span;
        let specs: Vec<ParamSpec> = match kind.as_str() {
            "events" => vec![
                ParamSpec::new("channels", Ty::Int, DefaultValue::Value(Value::Int(2))),
                ParamSpec::required("height", Ty::Int),
                ParamSpec::required("width", Ty::Int),
                ParamSpec::required("T", Ty::Int),
                ParamSpec::new(
                    "framing",
                    Ty::Any,
                    DefaultValue::Value(Value::Spec {
                        name: "frames".into(),
                        args: vec![],
                    }),
                ),
                ParamSpec::new("downsample", Ty::Int, DefaultValue::Value(Value::Int(1))),
            ],
            "image" => vec![
                ParamSpec::required("channels", Ty::Int),
                ParamSpec::required("height", Ty::Int),
                ParamSpec::required("width", Ty::Int),
                ParamSpec::required("T", Ty::Int),
            ],
            _ => {
                self.diags.push(
                    unknown_name(&kind, input.source.callee.span, ["events", "image"])
                        .note("inputs are `events(...)` (event streams framed into T frames) or `image(...)` (static, repeated over T)"),
                );
                return None;
            }
        };
        let env = self.consts_env(scope);
        let bound = match bind(&specs, &input.source.args, &env, &env, &kind, span) {
            Ok(b) => b,
            Err(d) => {
                self.diags.push(d);
                return None;
            }
        };
        let get = |n: &str| bound.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let int = |n: &str| {
            if let Some(Value::Int(i)) = get(n) {
                i
            } else {
                0
            }
        };
        let arg_span = |n: &str| {
            input
                .source
                .args
                .iter()
                .find(|a| a.name.as_ref().is_some_and(|x| x.name == n))
                .map_or(span, |a| a.value.span)
        };
        for (n, min) in [
            ("channels", 1),
            ("height", 1),
            ("width", 1),
            ("T", 1),
            ("downsample", 1),
        ] {
            if get(n).is_some() && int(n) < min {
                let mut d = Diagnostic::error(
                    ErrorCode::InvalidValue,
                    format!("`{n}` must be at least {min}, found {}", int(n)),
                )
                .primary(arg_span(n), "too small");
                if n == "T" {
                    d = d.help("T is the number of time steps the network runs; the paper uses 8-60 for event data");
                }
                self.diags.push(d);
                return None;
            }
        }
        let (t, c, h, w) = (
            int("T") as usize,
            int("channels") as usize,
            int("height") as usize,
            int("width") as usize,
        );
        let source = if kind == "events" {
            let ds = int("downsample") as usize;
            if h < ds || w < ds {
                self.diags.push(
                    Diagnostic::error(
                        ErrorCode::InvalidValue,
                        format!("downsampling {h}x{w} by {ds} leaves nothing"),
                    )
                    .primary(arg_span("downsample"), "too large"),
                );
                return None;
            }
            let framing = match get("framing") {
                Some(Value::Spec { name, args }) => match name.as_str() {
                    "count" if args.is_empty() => Framing::Count,
                    "frames" if args.is_empty() => Framing::Frames,
                    "time" => match args.first().map(|(_, v)| v) {
                        Some(Value::Time(us)) if *us > 0.0 => Framing::Time { window_us: *us },
                        Some(Value::Time(_)) => {
                            self.diags.push(
                                Diagnostic::error(
                                    ErrorCode::InvalidValue,
                                    "a framing window must be positive",
                                )
                                .primary(arg_span("framing"), "here"),
                            );
                            return None;
                        }
                        _ => {
                            self.diags.push(
                                Diagnostic::error(ErrorCode::Unit, "`time(...)` framing needs a window with a unit")
                                    .primary(arg_span("framing"), "missing or unitless window")
                                    .help("e.g. `framing = time(25ms)` (the paper's DVS128 Gesture setting)"),
                            );
                            return None;
                        }
                    },
                    _ => {
                        self.diags.push(bad_framing(arg_span("framing")));
                        return None;
                    }
                },
                _ => {
                    self.diags.push(bad_framing(arg_span("framing")));
                    return None;
                }
            };
            InputSource::Events {
                channels: c,
                height: h,
                width: w,
                framing,
                downsample: ds,
            }
        } else {
            InputSource::Image {
                channels: c,
                height: h,
                width: w,
            }
        };
        let (h, w) = match &source {
            InputSource::Events { downsample, .. } => (h / downsample, w / downsample),
            InputSource::Image { .. } => (h, w),
        };
        let ty = TensorType::image(t, c, h, w, Elem::Real);
        let name = input.name.name.clone();
        if self.counters.insert(name.clone(), 1).is_some() {
            return None;
        }
        Some(self.graph.add_node(Node {
            op: Op::Input {
                name: name.clone(),
                source,
            },
            inputs: vec![],
            params: vec![],
            ty,
            name,
            span: Some(input.name.span),
            group: None,
        }))
    }

    fn block(&mut self, b: &Bound, x: ValueId, span: Span) -> Flowing {
        let Some(ast::Item::Block(def)) = self.program.item(b.def) else {
            return None;
        };
        if self.block_stack.contains(&b.def) {
            let chain: Vec<String> = self
                .block_stack
                .iter()
                .filter_map(|d| self.program.item(*d).map(|i| i.name().name.clone()))
                .chain(std::iter::once(def.name.name.clone()))
                .collect();
            self.diags.push(
                Diagnostic::error(ErrorCode::Cycle, format!("block `{}` uses itself", def.name.name))
                    .primary(span, "recursive use")
                    .secondary(def.name.span, "block defined here")
                    .note(format!("expansion chain: {}", chain.join(" -> ")))
                    .help("blocks expand at compile time, so they cannot recurse; use `repeat n { ... }` for depth"),
            );
            return None;
        }
        let consts: HashMap<String, Value> = b.args.iter().cloned().collect();
        let env = ConstEnv {
            program: self.program,
            file: b.def.file,
            locals: &consts,
        };
        let requires = def.body.iter().filter_map(|s| {
            if let BodyStmt::Require(r) = s {
                Some(r)
            } else {
                None
            }
        });
        if let Err(d) = check_requires(requires, &env, span, &format!("block `{}`", def.name.name))
        {
            self.diags.push(d);
            return None;
        }
        let mut scope = Scope {
            file: b.def.file,
            consts,
            values: HashMap::new(),
        };
        scope
            .values
            .insert("input".into(), (Some(x), def.name.span, true));
        self.block_stack.push(b.def);
        let out = self.body(&mut scope, &def.body, def.span, "block");
        self.block_stack.pop();
        self.warn_unused(&scope);
        out
    }

    fn neuron(
        &mut self,
        n: &Bound,
        x: ValueId,
        gate: Option<ValueId>,
        emit: ScanEmit,
        span: Span,
    ) -> Flowing {
        let program = match instantiate_neuron(self.program, n, span) {
            Ok(p) => p,
            Err(d) => {
                self.diags
                    .push(d.at_use(span, &format!("neuron `{}`", n.name)));
                return None;
            }
        };
        let base = program.name.to_lowercase();
        let mut inputs = vec![x];
        inputs.extend(gate);
        self.push(
            Op::Scan {
                neuron: Box::new(program),
                emit,
            },
            inputs,
            &base,
            span,
            &[],
            false,
        )
    }

    fn layer(
        &mut self,
        scope: &mut Scope,
        call: &ast::Call,
        name: &str,
        x: ValueId,
    ) -> Result<Flowing, Diagnostic> {
        let span = call.span;
        let int = |v: i64| DefaultValue::Value(Value::Int(v));
        let specs: Vec<ParamSpec> = match name {
            "conv" => vec![
                ParamSpec::required("channels", Ty::Int),
                ParamSpec::required("kernel", Ty::Int),
                ParamSpec::new("stride", Ty::Int, int(1)),
                ParamSpec::new("pad", Ty::Int, int(-1)),
                ParamSpec::new("bias", Ty::Bool, DefaultValue::Value(Value::Bool(true))),
            ],
            "linear" => vec![
                ParamSpec::required("features", Ty::Int),
                ParamSpec::new("bias", Ty::Bool, DefaultValue::Value(Value::Bool(true))),
            ],
            "pool.avg" | "pool.max" => vec![
                ParamSpec::required("kernel", Ty::Int),
                ParamSpec::new("stride", Ty::Int, int(0)),
            ],
            "bn" => vec![
                ParamSpec::new("eps", Ty::Float, DefaultValue::Value(Value::Float(1e-5))),
                ParamSpec::new(
                    "momentum",
                    Ty::Float,
                    DefaultValue::Value(Value::Float(0.1)),
                ),
            ],
            "dropout" => vec![ParamSpec::required("p", Ty::Float)],
            "attend" => vec![
                ParamSpec::required("attention", Ty::Attention),
                ParamSpec::new(
                    "on",
                    Ty::Any,
                    DefaultValue::Value(Value::Spec {
                        name: "current".into(),
                        args: vec![],
                    }),
                ),
                ParamSpec::required("cell", Ty::Neuron),
            ],
            "readout.membrane" => vec![ParamSpec::required("cell", Ty::Neuron)],
            _ => vec![],
        };
        let env = self.consts_env(scope);
        // `attend(att, on = membrane, cell = LIF)` needs the neuron only for membrane placement.
        let args: Vec<ast::Arg> = call.args.clone();
        let mut specs = specs;
        let placement_membrane = name == "attend"
            && args.iter().any(|a| {
                a.name.as_ref().is_some_and(|n| n.name == "on")
                    && match &a.value.kind {
                        ast::ExprKind::Name(p) => p.dotted() == "membrane",
                        ast::ExprKind::Str(s) => s == "membrane",
                        _ => false,
                    }
            });
        if name == "attend" && !placement_membrane {
            specs.truncate(2);
        }
        let args: Vec<ast::Arg> = args
            .into_iter()
            .map(|mut a| {
                if a.name.as_ref().is_some_and(|n| n.name == "on")
                    && let ast::ExprKind::Name(p) = &a.value.kind
                {
                    a.value.kind = ast::ExprKind::Str(p.dotted());
                }
                a
            })
            .collect();
        let bound = bind(&specs, &args, &env, &env, name, span)?;
        let get = |n: &str| bound.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let get_int = |n: &str| {
            if let Some(Value::Int(i)) = get(n) {
                i
            } else {
                0
            }
        };
        let arg_span = |n: &str, pos: usize| {
            call.args
                .iter()
                .find(|a| a.name.as_ref().is_some_and(|x| x.name == n))
                .or_else(|| call.args.iter().filter(|a| a.name.is_none()).nth(pos))
                .map_or(span, |a| a.value.span)
        };
        let positive = |n: &str, pos: usize, min: i64| -> Result<usize, Diagnostic> {
            let v = get_int(n);
            if v < min {
                return Err(Diagnostic::error(
                    ErrorCode::InvalidValue,
                    format!("`{n}` of `{name}` must be at least {min}, found {v}"),
                )
                .primary(arg_span(n, pos), "invalid value"));
            }
            Ok(v as usize)
        };
        let base = name.rsplit('.').next().unwrap_or(name);
        Ok(match name {
            "conv" => {
                let c = positive("channels", 0, 1)?;
                let k = positive("kernel", 1, 1)?;
                let s = positive("stride", 2, 1)?;
                let pad = match get_int("pad") {
                    -1 => k / 2,
                    p if p < 0 => {
                        return Err(Diagnostic::error(
                            ErrorCode::InvalidValue,
                            format!("`pad` must be zero or more, found {p}"),
                        )
                        .primary(arg_span("pad", 3), "negative padding"));
                    }
                    p => p as usize,
                };
                let bias = get("bias") == Some(Value::Bool(true));
                self.push(
                    Op::Conv2d {
                        out_channels: c,
                        kernel: (k, k),
                        stride: (s, s),
                        padding: (pad, pad),
                    },
                    vec![x],
                    base,
                    span,
                    &[],
                    bias,
                )
            }
            "linear" => {
                let n = positive("features", 0, 1)?;
                let bias = get("bias") == Some(Value::Bool(true));
                if !self.graph.ty(x).has(Axis::N) {
                    return Err(Diagnostic::error(
                        ErrorCode::Shape,
                        format!(
                            "`linear` needs a flattened [T, B, N] tensor, found {}",
                            self.graph.ty(x).shape_string()
                        ),
                    )
                    .primary(span, "applied to a feature map")
                    .help("insert `flatten` before `linear`"));
                }
                self.push(
                    Op::Dense {
                        axis: Axis::N,
                        out: n,
                    },
                    vec![x],
                    base,
                    span,
                    &[],
                    bias,
                )
            }
            "pool.avg" | "pool.max" => {
                let k = positive("kernel", 0, 1)?;
                let s = match get_int("stride") {
                    0 => k,
                    _ => positive("stride", 1, 1)?,
                };
                let kind = if name == "pool.avg" {
                    PoolKind::Avg
                } else {
                    PoolKind::Max
                };
                if k == 1 && s == 1 {
                    Some(x)
                } else {
                    self.push(
                        Op::Pool {
                            kind,
                            kernel: k,
                            stride: s,
                        },
                        vec![x],
                        if kind == PoolKind::Avg {
                            "avgpool"
                        } else {
                            "maxpool"
                        },
                        span,
                        &[],
                        false,
                    )
                }
            }
            "bn" => {
                let eps = get("eps").and_then(|v| v.as_f64()).unwrap_or(1e-5);
                let momentum = get("momentum").and_then(|v| v.as_f64()).unwrap_or(0.1);
                if eps <= 0.0 || !(0.0..=1.0).contains(&momentum) {
                    return Err(Diagnostic::error(
                        ErrorCode::InvalidValue,
                        "batchnorm needs eps > 0 and momentum in [0, 1]",
                    )
                    .primary(span, "here"));
                }
                let Some(axis) = self.graph.ty(x).feature_axis() else {
                    return Err(Diagnostic::error(
                        ErrorCode::Shape,
                        format!(
                            "`bn` needs a channel or feature axis, found {}",
                            self.graph.ty(x).shape_string()
                        ),
                    )
                    .primary(span, "here"));
                };
                self.push(
                    Op::BatchNorm {
                        axis,
                        eps,
                        momentum,
                    },
                    vec![x],
                    base,
                    span,
                    &[],
                    false,
                )
            }
            "dropout" => {
                let p = get("p").and_then(|v| v.as_f64()).unwrap_or(-1.0);
                if !(0.0..1.0).contains(&p) {
                    return Err(Diagnostic::error(
                        ErrorCode::InvalidValue,
                        format!("dropout probability must be in [0, 1), found {p}"),
                    )
                    .primary(arg_span("p", 0), "out of range"));
                }
                self.push(Op::Dropout { p }, vec![x], base, span, &[], false)
            }
            "flatten" => self.push(Op::Flatten, vec![x], base, span, &[], false),
            "relu" => self.push(Op::Unary(UnaryOp::Relu), vec![x], base, span, &[], false),
            "sigmoid" => self.push(Op::Unary(UnaryOp::Sigmoid), vec![x], base, span, &[], false),
            "identity" => Some(x),
            "attend" => {
                let Some(Value::Attention(att)) = get("attention") else {
                    return Ok(None);
                };
                let on = match get("on") {
                    Some(Value::Str(s)) | Some(Value::Spec { name: s, .. }) => s,
                    _ => String::new(),
                };
                match on.as_str() {
                    "current" => self.attend(&att, x, false, span)?.0,
                    "membrane" => {
                        let Some(Value::Neuron(cell)) = get("cell") else {
                            return Ok(None);
                        };
                        let (_, gate) = self.attend(&att, x, true, span)?;
                        self.neuron(&cell, x, gate, ScanEmit::Spikes, span)
                    }
                    other => {
                        return Err(Diagnostic::error(ErrorCode::Type, format!("unknown attention placement `{other}`"))
                            .primary(arg_span("on", 1), "placement")
                            .suggest(other, ["current", "membrane"])
                            .note("`on = current` re-weights the input current; `on = membrane` scales the membrane potential before firing (give `cell = LIF(...)`)"));
                    }
                }
            }
            "readout.rate" | "readout.mean" | "readout.membrane" => {
                let ty = self.graph.ty(x).clone();
                if !ty.has(Axis::N) {
                    return Err(Diagnostic::error(ErrorCode::Shape, format!("a readout needs a flattened [T, B, N] tensor, found {}", ty.shape_string()))
                        .primary(span, "readout of a feature map")
                        .help("end the network with `flatten -> linear(classes) -> LIF` before the readout"));
                }
                let source = if name == "readout.membrane" {
                    let Some(Value::Neuron(cell)) = get("cell") else {
                        return Ok(None);
                    };
                    match self.neuron(&cell, x, None, ScanEmit::Membrane, span) {
                        Some(v) => v,
                        None => return Ok(None),
                    }
                } else {
                    x
                };
                let out = self.push(
                    Op::Reduce {
                        kind: ReduceKind::Mean,
                        axes: vec![Axis::T],
                        keepdim: false,
                    },
                    vec![source],
                    "readout",
                    span,
                    &[],
                    false,
                );
                if let Some(o) = out {
                    self.readouts.push(o);
                }
                out
            }
            _ => None,
        })
    }

    /// Expands an attention module on `x`. Returns (re-weighted tensor, combined gate).
    fn attend(
        &mut self,
        att: &AttSpec,
        x: ValueId,
        want_gate: bool,
        span: Span,
    ) -> Result<(Flowing, Flowing), Diagnostic> {
        if self.attention_group.is_some() {
            return self.attend_parts(att, x, want_gate, span);
        }
        self.attention_group = Some(self.fresh_name("att"));
        let result = self.attend_parts(att, x, want_gate, span);
        self.attention_group = None;
        result
    }

    fn attend_parts(
        &mut self,
        att: &AttSpec,
        x: ValueId,
        want_gate: bool,
        span: Span,
    ) -> Result<(Flowing, Flowing), Diagnostic> {
        let parts: Vec<AttSpec> = match att {
            AttSpec::None => return Ok((Some(x), None)),
            AttSpec::Seq(p) => p.clone(),
            AttSpec::Relu(inner) => {
                if want_gate {
                    return Err(Diagnostic::error(
                        ErrorCode::AttentionDim,
                        "a post-activation `relu(...)` attention cannot be placed on the membrane",
                    )
                    .primary(span, "membrane placement")
                    .help("use the attention without `relu(...)`, or place it on the current"));
                }
                let (y, g) = self.attend(inner, x, false, span)?;
                let y = match y {
                    Some(y) => {
                        self.push(Op::Unary(UnaryOp::Relu), vec![y], "relu", span, &[], false)
                    }
                    None => None,
                };
                return Ok((y, g));
            }
            single => vec![single.clone()],
        };
        let mut current = x;
        let mut gate: Option<ValueId> = None;
        for (i, part) in parts.iter().enumerate() {
            let w = self.gate(part, current, span)?;
            let Some(w) = w else { return Ok((None, None)) };
            // With membrane placement the last re-weighted current feeds nothing: skip it.
            let last = i + 1 == parts.len();
            current = if want_gate && last {
                current
            } else {
                match self.push(
                    Op::Binary(BinaryOp::Mul),
                    vec![current, w],
                    "gated",
                    span,
                    &[],
                    false,
                ) {
                    Some(c) => c,
                    None => return Ok((None, None)),
                }
            };
            gate = match gate {
                _ if !want_gate => None,
                None => Some(w),
                Some(g) => self.push(
                    Op::Binary(BinaryOp::Mul),
                    vec![g, w],
                    "gate",
                    span,
                    &[],
                    false,
                ),
            };
        }
        Ok((Some(current), if want_gate { gate } else { None }))
    }

    /// The weights of one attention primitive for `x`, in (0, 1), broadcastable to `x`.
    fn gate(&mut self, part: &AttSpec, x: ValueId, span: Span) -> Result<Flowing, Diagnostic> {
        let ty = self.graph.ty(x).clone();
        let dim_error = |msg: String, help: &str| {
            Diagnostic::error(ErrorCode::AttentionDim, msg)
                .primary(span, "attention applied here")
                .help(help.to_string())
        };
        match part {
            AttSpec::Temporal { ratio } => {
                let t = ty.size(Axis::T).unwrap_or(0);
                let hidden = t / (*ratio as usize);
                if hidden == 0 {
                    return Err(dim_error(
                        format!(
                            "temporal attention with ratio {ratio} needs at least {ratio} time steps, the tensor has T = {t}"
                        ),
                        "lower the temporal ratio or raise T",
                    ));
                }
                let pool_axes: Vec<Axis> = ty
                    .dims
                    .iter()
                    .map(|(a, _)| *a)
                    .filter(|a| !matches!(a, Axis::T | Axis::B))
                    .collect();
                self.squeeze_excite(x, pool_axes, Axis::T, hidden, "ta", span)
            }
            AttSpec::Channel { ratio } => {
                let Some(c) = ty.size(Axis::C) else {
                    return Err(dim_error(
                        format!(
                            "channel attention needs a channel axis, found {}",
                            ty.shape_string()
                        ),
                        "after `flatten` only temporal attention applies (the paper uses TA on fully connected layers)",
                    ));
                };
                let hidden = c / (*ratio as usize);
                if hidden == 0 {
                    return Err(dim_error(
                        format!(
                            "channel attention with ratio {ratio} needs at least {ratio} channels, found C = {c}"
                        ),
                        "lower the channel ratio",
                    ));
                }
                self.squeeze_excite(
                    x,
                    vec![Axis::T, Axis::H, Axis::W],
                    Axis::C,
                    hidden,
                    "ca",
                    span,
                )
            }
            AttSpec::Spatial { kernel } => {
                if !ty.is_spatial() {
                    return Err(dim_error(
                        format!(
                            "spatial attention needs H and W, found {}",
                            ty.shape_string()
                        ),
                        "move the attention before `flatten`; fully connected layers take temporal attention only",
                    ));
                }
                let k = *kernel as usize;
                let reduce = |kind| Op::Reduce {
                    kind,
                    axes: vec![Axis::T, Axis::C],
                    keepdim: true,
                };
                let avg = self.push_checked(
                    reduce(ReduceKind::Mean),
                    vec![x],
                    "sa_avg",
                    span,
                    &[],
                    false,
                )?;
                let max = self.push_checked(
                    reduce(ReduceKind::Max),
                    vec![x],
                    "sa_max",
                    span,
                    &[],
                    false,
                )?;
                let both = self.push_checked(
                    Op::Concat { axis: Axis::C },
                    vec![avg, max],
                    "sa_cat",
                    span,
                    &[],
                    false,
                )?;
                let conv = Op::Conv2d {
                    out_channels: 1,
                    kernel: (k, k),
                    stride: (1, 1),
                    padding: (k / 2, k / 2),
                };
                let map = self.push_checked(conv, vec![both], "sa_conv", span, &[], false)?;
                Ok(Some(self.push_checked(
                    Op::Unary(UnaryOp::Sigmoid),
                    vec![map],
                    "sa",
                    span,
                    &[],
                    false,
                )?))
            }
            AttSpec::None => Ok(None),
            AttSpec::Seq(_) | AttSpec::Relu(_) => Err(Diagnostic::error(
                ErrorCode::AttentionDim,
                "nested attention compositions are not supported",
            )
            .primary(span, "here")
            .help("compose primitives directly: `temporal(r) * channel(r) * spatial(k)`")),
        }
    }

    /// CBAM-style gate: avg and max pooling over `pool`, a shared bias-free MLP along `axis`
    /// (size → hidden → size, ReLU between), summed, then a sigmoid.
    fn squeeze_excite(
        &mut self,
        x: ValueId,
        pool: Vec<Axis>,
        axis: Axis,
        hidden: usize,
        base: &str,
        span: Span,
    ) -> Result<Flowing, Diagnostic> {
        let size = self.graph.ty(x).size(axis).unwrap_or(0);
        let avg = self.push_checked(
            Op::Reduce {
                kind: ReduceKind::Mean,
                axes: pool.clone(),
                keepdim: true,
            },
            vec![x],
            &format!("{base}_avg"),
            span,
            &[],
            false,
        )?;
        let max = self.push_checked(
            Op::Reduce {
                kind: ReduceKind::Max,
                axes: pool,
                keepdim: true,
            },
            vec![x],
            &format!("{base}_max"),
            span,
            &[],
            false,
        )?;
        let fc1 = Op::Dense { axis, out: hidden };
        let fc2 = Op::Dense { axis, out: size };
        let a1 = self.push_checked(
            fc1.clone(),
            vec![avg],
            &format!("{base}_fc1_"),
            span,
            &[],
            false,
        )?;
        let w1 = self.graph.node(a1).params.clone();
        let a1 = self.push_checked(
            Op::Unary(UnaryOp::Relu),
            vec![a1],
            &format!("{base}_relu"),
            span,
            &[],
            false,
        )?;
        let a2 = self.push_checked(
            fc2.clone(),
            vec![a1],
            &format!("{base}_fc2_"),
            span,
            &[],
            false,
        )?;
        let w2 = self.graph.node(a2).params.clone();
        let m1 = self.push_checked(fc1, vec![max], &format!("{base}_fc1_"), span, &w1, false)?;
        let m1 = self.push_checked(
            Op::Unary(UnaryOp::Relu),
            vec![m1],
            &format!("{base}_relu"),
            span,
            &[],
            false,
        )?;
        let m2 = self.push_checked(fc2, vec![m1], &format!("{base}_fc2_"), span, &w2, false)?;
        let sum = self.push_checked(
            Op::Binary(BinaryOp::Add),
            vec![a2, m2],
            &format!("{base}_sum"),
            span,
            &[],
            false,
        )?;
        Ok(Some(self.push_checked(
            Op::Unary(UnaryOp::Sigmoid),
            vec![sum],
            base,
            span,
            &[],
            false,
        )?))
    }
}

fn bad_framing(span: Span) -> Diagnostic {
    Diagnostic::error(ErrorCode::Type, "unknown framing")
        .primary(span, "expected `time(<window>)`, `count` or `frames`")
        .note("time(25ms): fixed windows (paper Sec. III-A); count: equal event counts per frame; frames: the recording split into T equal slices")
}
