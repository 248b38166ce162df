//! The catalogue of error codes and their long explanations (`snnc explain E0xxx`).

macro_rules! codes {
    ($($name:ident = $code:literal : $title:literal => $text:literal;)*) => {
        /// Stable identifiers for every kind of diagnostic snnc emits.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode { $($name),* }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$name => $code),* }
            }

            pub fn title(self) -> &'static str {
                match self { $(ErrorCode::$name => $title),* }
            }

            pub fn explanation(self) -> &'static str {
                match self { $(ErrorCode::$name => $text),* }
            }
        }
    };
}

codes! {
    Syntax = "E0001": "syntax error" =>
"The file does not follow the grammar of `.snn`. The message names what was expected at the
marked place. Common causes: a missing `->` between stages, a missing closing `}` or `)`, a
keyword used as a name (`let`, `repeat`, `state`, `learn`, `train`, ...).";
    UnknownName = "E0002": "unknown name" =>
"A name was used that is not defined in this file, not imported, and not a builtin.
Define it, import it (`import std.neurons.{LIF}`), or fix the spelling; snnc suggests the
closest known name when there is one.";
    Duplicate = "E0003": "duplicate definition" =>
"Two definitions, parameters, `let` bindings, inputs or state variables share one name in one
scope. Rename one of them.";
    Arity = "E0004": "wrong arguments" =>
"A call passes too many positional arguments, an unknown named argument, the same argument
twice, or leaves out a required parameter. The help lists the callee's parameters.";
    Type = "E0005": "type mismatch" =>
"A value of one kind was given where another kind is needed: e.g. a float where an `int` is
required, an attention where a neuron is expected, or a spike tensor where a number belongs.";
    Shape = "E0006": "shape mismatch" =>
"Tensor shapes do not fit: e.g. adding two branches with different channel counts, a pooling
window larger than the feature map, or a layer that needs [T, B, C, H, W] applied after
`flatten`. The message shows both shapes as [T, B, C, H, W] or [T, B, N].";
    Unit = "E0007": "bad unit" =>
"A quantity has the wrong unit or none: time parameters need `us`, `ms` or `s` (e.g. `25ms`);
dimensionless parameters take plain numbers.";
    AttentionDim = "E0008": "bad attention dimension" =>
"An attention module needs dimensions the tensor lacks: spatial attention needs H and W (not
after `flatten`), channel attention needs C, temporal attention needs T > 1 steps. Reduction
ratios must divide into at least one hidden unit.";
    Cycle = "E0009": "cycle" =>
"A definition refers to itself, directly or through others (blocks using each other,
imports importing each other, `let` bindings referring to later ones). Dataflow in `.snn` is
acyclic; recurrence over time belongs in a `neuron`'s state variables.";
    InvalidValue = "E0010": "invalid parameter value" =>
"A parameter value is outside its valid range: e.g. `tau <= 0`, `T = 0`, a negative or zero
kernel size, a dropout probability outside [0, 1), a reduction ratio < 1.";
    ImportNotFound = "E0011": "import not found" =>
"An `import` names a module that is neither in the standard library (`std.*`) nor a `.snn`
file relative to the importing file. `std` modules: neurons, surrogates, attention, blocks,
networks.";
    Neuron = "E0012": "invalid neuron definition" =>
"A neuron must declare at least one `state` (the first is its membrane potential), assign the
result of exactly one `fire(...)` to a name (its spikes), and only use its parameters, states,
`learn` values, `input` and earlier locals in its equations.";
    Model = "E0013": "invalid model structure" =>
"A model needs at least one `input`, a final dataflow ending in a `readout`, and only one
final output. Blocks need a final dataflow that produces their output.";
    Train = "E0014": "invalid training setting" =>
"A `train { }` setting is unknown or has a value of the wrong kind. See docs/language.md for
the list of settings (dataset, T, batch, epochs, optimizer, schedule, loss, seed, ...).";
    Io = "E0015": "cannot read file" =>
"A source file could not be read. Check the path and permissions.";
}

/// The long explanation of a code like `E0006`, if it exists.
pub fn explain(code: &str) -> Option<ErrorCode> {
    ErrorCode::ALL
        .iter()
        .copied()
        .find(|c| c.as_str().eq_ignore_ascii_case(code))
}
