//! Snapshot tests of error messages: each case is a small broken `.snn` source; the rendered
//! diagnostics (code, message, `file:line:col`, labels, help) are the snapshot.

use snnc::diag::ErrorCode;
use snnc::sema::compile_source;
use std::path::Path;

const PRELUDE: &str = "import std.neurons.{LIF, PLIF, IF}\nimport std.attention.*\n";

/// (name, source, the error code that must appear).
const CASES: &[(&str, &str, ErrorCode)] = &[
    (
        "syntax_missing_arrow",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> conv(4, 3) bn -> readout.rate\n}\n",
        ErrorCode::UnknownName,
    ),
    (
        "syntax_unclosed_brace",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> flatten -> readout.rate\n",
        ErrorCode::Syntax,
    ),
    (
        "syntax_keyword_as_name",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    let let = x -> flatten\n    let -> readout.rate\n}\n",
        ErrorCode::Syntax,
    ),
    (
        "syntax_bad_number",
        "neuron N(tau = 2.) {\n    state v = 0.0\n    spike = fire(v)\n}\n",
        ErrorCode::Syntax,
    ),
    (
        "syntax_import_after_item",
        "block B() { input -> flatten }\nimport std.neurons.{LIF}\n",
        ErrorCode::Syntax,
    ),
    (
        "unknown_layer_typo",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> conv(4, 3) -> batchnorm -> LIF -> flatten -> linear(2) -> LIF -> readout.rate\n}\n",
        ErrorCode::UnknownName,
    ),
    (
        "unknown_neuron_not_imported",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> conv(4, 3) -> MALIF -> flatten -> readout.rate\n}\n",
        ErrorCode::UnknownName,
    ),
    (
        "unknown_value",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    y -> flatten -> readout.rate\n}\n",
        ErrorCode::UnknownName,
    ),
    (
        "unknown_import",
        "import std.nerons.{LIF}\n",
        ErrorCode::ImportNotFound,
    ),
    (
        "unknown_import_name",
        "import std.neurons.{LIFF}\n",
        ErrorCode::UnknownName,
    ),
    (
        "unknown_type",
        "block B(c: integer) { input -> conv(c, 3) }\n",
        ErrorCode::UnknownName,
    ),
    (
        "unknown_equation_variable",
        "neuron N(v_th = 1.0) {\n    state v = 0.0\n    v = v + inpt\n    spike = fire(v - v_th, surrogate = atan())\n}\nimport std.surrogates.{atan}\n",
        ErrorCode::Syntax,
    ),
    (
        "unknown_state_name",
        "import std.surrogates.{atan}\nneuron N(v_th = 1.0) {\n    state v = 0.0\n    v = v + inpt\n    spike = fire(v - v_th, surrogate = atan())\n}\n",
        ErrorCode::UnknownName,
    ),
    (
        "arity_too_many",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> conv(4, 3, 1, 1, true, 7) -> LIF -> flatten -> readout.rate\n}\n",
        ErrorCode::Arity,
    ),
    (
        "arity_missing",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> conv(4) -> LIF -> flatten -> readout.rate\n}\n",
        ErrorCode::Arity,
    ),
    (
        "arity_unknown_named",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> conv(4, 3, strde = 2) -> LIF -> flatten -> readout.rate\n}\n",
        ErrorCode::Arity,
    ),
    (
        "arity_given_twice",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> LIF(2.0, tau = 3.0) -> flatten -> readout.rate\n}\n",
        ErrorCode::Arity,
    ),
    (
        "type_float_for_int",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> conv(4.5, 3) -> LIF -> flatten -> readout.rate\n}\n",
        ErrorCode::Type,
    ),
    (
        "type_attention_for_neuron",
        "block B(cell: neuron = LIF()) { input -> cell }\nmodel M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> B(cell = TCSA()) -> flatten -> readout.rate\n}\n",
        ErrorCode::Type,
    ),
    (
        "shape_residual_mismatch",
        "block R() {\n    let branch = input -> conv(8, 3) -> bn\n    input + branch\n}\nmodel M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> conv(4, 3) -> R -> LIF -> flatten -> readout.rate\n}\n",
        ErrorCode::Shape,
    ),
    (
        "shape_linear_needs_flatten",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> conv(4, 3) -> LIF -> linear(10) -> readout.rate\n}\n",
        ErrorCode::Shape,
    ),
    (
        "shape_pool_too_large",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> pool.avg(4) -> pool.avg(4) -> LIF -> flatten -> readout.rate\n}\n",
        ErrorCode::Shape,
    ),
    (
        "shape_readout_of_feature_map",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> conv(4, 3) -> LIF -> readout.rate\n}\n",
        ErrorCode::Shape,
    ),
    (
        "unit_missing",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T, framing = time(25))\n    x -> flatten -> readout.rate\n}\n",
        ErrorCode::Unit,
    ),
    (
        "unit_unknown",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T, framing = time(25kg))\n    x -> flatten -> readout.rate\n}\n",
        ErrorCode::Unit,
    ),
    (
        "unit_on_dimensionless",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> LIF(tau = 2ms) -> flatten -> readout.rate\n}\n",
        ErrorCode::Unit,
    ),
    (
        "unit_mixed_arithmetic",
        "block B(w: time = 2ms + 3) { input -> flatten }\n",
        ErrorCode::Unit,
    ),
    (
        "attention_spatial_after_flatten",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> flatten -> attend(SA()) -> LIF -> readout.rate\n}\n",
        ErrorCode::AttentionDim,
    ),
    (
        "attention_channel_after_flatten",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> flatten -> attend(CA()) -> LIF -> readout.rate\n}\n",
        ErrorCode::AttentionDim,
    ),
    (
        "attention_temporal_ratio_exceeds_T",
        "model M(T: int = 2) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> conv(4, 3) -> attend(TA(r_t = 5)) -> LIF -> flatten -> readout.rate\n}\n",
        ErrorCode::AttentionDim,
    ),
    (
        "attention_even_kernel",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> attend(SA(k = 4)) -> LIF -> flatten -> readout.rate\n}\n",
        ErrorCode::InvalidValue,
    ),
    (
        "cycle_recursive_block",
        "block A() { input -> B }\nblock B() { input -> A }\nmodel M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> A -> LIF -> flatten -> readout.rate\n}\n",
        ErrorCode::Cycle,
    ),
    (
        "cycle_self_referencing_let",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    let a = a -> conv(2, 3)\n    a -> LIF -> flatten -> readout.rate\n}\n",
        ErrorCode::Cycle,
    ),
    (
        "duplicate_definition",
        "block B() { input -> flatten }\nblock B() { input -> LIF }\n",
        ErrorCode::Duplicate,
    ),
    (
        "duplicate_let",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    let a = x -> conv(2, 3)\n    let a = x -> conv(2, 3)\n    a -> LIF -> flatten -> readout.rate\n}\n",
        ErrorCode::Duplicate,
    ),
    (
        "duplicate_state",
        "import std.surrogates.{atan}\nneuron N(surrogate = atan()) {\n    state v = 0.0\n    state v = 1.0\n    spike = fire(v - 1.0)\n}\n",
        ErrorCode::Duplicate,
    ),
    (
        "invalid_tau_nonpositive",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> LIF(tau = -1.0) -> flatten -> readout.rate\n}\n",
        ErrorCode::InvalidValue,
    ),
    (
        "invalid_T_zero",
        "model M(T: int = 0) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> LIF -> flatten -> readout.rate\n}\n",
        ErrorCode::InvalidValue,
    ),
    (
        "invalid_negative_kernel",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> conv(4, -3) -> LIF -> flatten -> readout.rate\n}\n",
        ErrorCode::InvalidValue,
    ),
    (
        "invalid_dropout",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> dropout(1.5) -> LIF -> flatten -> readout.rate\n}\n",
        ErrorCode::InvalidValue,
    ),
    (
        "neuron_never_fires",
        "neuron N(tau = 2.0) {\n    state v = 0.0\n    v = v + input / tau\n}\nmodel M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> N -> flatten -> readout.rate\n}\n",
        ErrorCode::Neuron,
    ),
    (
        "neuron_fires_twice",
        "import std.surrogates.{atan}\nneuron N(surrogate = atan()) {\n    state v = 0.0\n    a = fire(v - 1.0)\n    b = fire(v - 2.0)\n}\nmodel M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> N -> flatten -> readout.rate\n}\n",
        ErrorCode::Neuron,
    ),
    (
        "model_without_readout",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> conv(4, 3) -> LIF -> flatten\n}\n",
        ErrorCode::Model,
    ),
    (
        "model_stage_after_readout",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> flatten -> readout.rate -> LIF\n}\n",
        ErrorCode::Model,
    ),
    (
        "train_unknown_setting",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> flatten -> LIF -> readout.rate\n    train {\n        epochz = 3\n    }\n}\n",
        ErrorCode::Train,
    ),
    (
        "train_negative_batch",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    x -> flatten -> LIF -> readout.rate\n    train {\n        batch = -4\n        optimizer = adamm(lr = 1e-3)\n    }\n}\n",
        ErrorCode::InvalidValue,
    ),
    (
        "unused_block_unknown_layer",
        "block B(c: int) {\n    let a = input -> conv(c, 3) -> bnn\n    a + missing\n}\n",
        ErrorCode::UnknownName,
    ),
    (
        "several_errors_in_one_run",
        "model M(T: int = 4) {\n    input x: events(height = 8, width = 8, T = T)\n    let a = x -> cnv(4, 3)\n    let b = x -> conv(4, 3) -> LIFF\n    a + b -> flatten -> readout.rate\n}\n",
        ErrorCode::UnknownName,
    ),
];

fn render(name: &str, source: &str) -> (String, Vec<ErrorCode>) {
    let text = format!("{PRELUDE}{source}");
    let c = compile_source(Path::new(&format!("errors/{name}.snn")), text, &[]);
    (
        c.diags.render_plain(&c.program.sources),
        c.diags.items.iter().map(|d| d.code).collect(),
    )
}

#[test]
fn every_error_case_is_reported_with_its_code() {
    assert!(CASES.len() >= 25);
    for (name, source, code) in CASES {
        let (rendered, codes) = render(name, source);
        assert!(
            codes.contains(code),
            "{name}: expected {code:?}, got {codes:?}\n{rendered}"
        );
        assert!(
            rendered.contains(&format!("errors/{name}.snn:")),
            "{name}: no file:line:col\n{rendered}"
        );
        insta::assert_snapshot!(*name, rendered);
    }
}

#[test]
fn several_errors_are_reported_in_one_run() {
    let (_, codes) = render(
        "several",
        CASES
            .iter()
            .find(|c| c.0 == "several_errors_in_one_run")
            .map(|c| c.1)
            .unwrap_or(""),
    );
    assert!(
        codes
            .iter()
            .filter(|c| **c == ErrorCode::UnknownName)
            .count()
            >= 2,
        "{codes:?}"
    );
}

#[test]
fn every_error_code_has_an_explanation() {
    for code in ErrorCode::ALL {
        assert!(
            code.explanation().len() > 40,
            "{} needs a real explanation",
            code.as_str()
        );
        assert_eq!(snnc::diag::explain(code.as_str()), Some(*code));
    }
}
