//! Checks a model's `train { }` section: known settings, value kinds and ranges. The runtime
//! reads the checked settings from the IR.

use super::value::{ConstEnv, Value, article};
use crate::diag::{Diagnostic, ErrorCode};
use crate::ir::{TrainSetting, TrainValue};
use crate::syntax::ast::TrainSection;

/// (setting, what it accepts, check).
const SETTINGS: &[(&str, &str)] = &[
    (
        "dataset",
        "nmnist(\"dir\"), dvs_gesture(\"dir\") or folder(\"dir\")",
    ),
    ("batch", "a positive int"),
    ("epochs", "a positive int"),
    ("lr", "a positive float"),
    ("optimizer", "adam(...), adamw(...) or sgd(...)"),
    ("schedule", "cosine, step(...), plateau(...) or constant"),
    ("loss", "cross_entropy or mse_rate"),
    ("seed", "a non-negative int"),
    ("weight_decay", "a float >= 0"),
    ("momentum", "a float in [0, 1)"),
    ("threads", "a positive int"),
];

pub fn check_train(
    section: &TrainSection,
    env: &ConstEnv,
) -> Result<Vec<TrainSetting>, Vec<Diagnostic>> {
    let mut out: Vec<TrainSetting> = Vec::new();
    let mut errors = Vec::new();
    for s in &section.settings {
        let name = s.name.name.as_str();
        let Some((_, accepts)) = SETTINGS.iter().find(|(n, _)| *n == name) else {
            errors.push(
                Diagnostic::error(
                    ErrorCode::Train,
                    format!("unknown training setting `{name}`"),
                )
                .primary(s.name.span, "not a setting")
                .suggest(name, SETTINGS.iter().map(|(n, _)| *n))
                .note(format!(
                    "settings: {}",
                    SETTINGS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            );
            continue;
        };
        if out.iter().any(|o| o.name == name) {
            errors.push(
                Diagnostic::error(
                    ErrorCode::Duplicate,
                    format!("training setting `{name}` given twice"),
                )
                .primary(s.name.span, "again here"),
            );
            continue;
        }
        let v = match env.eval(&s.value) {
            Ok(v) => v,
            Err(d) => {
                errors.push(d);
                continue;
            }
        };
        let spec_in = |names: &[&str]| matches!(&v, Value::Spec { name, .. } if names.contains(&name.as_str()));
        let ok = match name {
            "dataset" => {
                spec_in(&["nmnist", "dvs_gesture", "folder"]) || matches!(v, Value::Str(_))
            }
            "batch" | "epochs" | "threads" => matches!(v, Value::Int(i) if i > 0),
            "seed" => matches!(v, Value::Int(i) if i >= 0),
            "lr" => v.as_f64().is_some_and(|x| x > 0.0) && !matches!(v, Value::Bool(_)),
            "weight_decay" => v.as_f64().is_some_and(|x| x >= 0.0) && !matches!(v, Value::Bool(_)),
            "momentum" => {
                v.as_f64().is_some_and(|x| (0.0..1.0).contains(&x)) && !matches!(v, Value::Bool(_))
            }
            "optimizer" => spec_in(&["adam", "adamw", "sgd"]),
            "schedule" => spec_in(&["cosine", "step", "plateau", "constant"]),
            "loss" => spec_in(&["cross_entropy", "mse_rate"]),
            _ => false,
        };
        if !ok {
            let code = if matches!(
                name,
                "batch" | "epochs" | "lr" | "threads" | "momentum" | "weight_decay"
            ) && v.as_f64().is_some()
            {
                ErrorCode::InvalidValue
            } else {
                ErrorCode::Train
            };
            errors.push(
                Diagnostic::error(code, format!("`{name}` must be {accepts}")).primary(
                    s.value.span,
                    format!("found {} {} `{v}`", article(v.kind()), v.kind()),
                ),
            );
            continue;
        }
        let Some(typed) = typed(&v) else {
            errors.push(
                Diagnostic::error(
                    ErrorCode::Train,
                    format!("`{name}` cannot hold {} {}", article(v.kind()), v.kind()),
                )
                .primary(s.value.span, "not a number, string or builtin setting"),
            );
            continue;
        };
        out.push(TrainSetting {
            typed,
            name: name.to_string(),
            value: v.to_string(),
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The runtime-facing form of a checked setting value.
fn typed(v: &Value) -> Option<TrainValue> {
    Some(match v {
        Value::Int(i) => TrainValue::Int(*i),
        Value::Float(f) => TrainValue::Float(*f),
        Value::Bool(b) => TrainValue::Bool(*b),
        Value::Str(s) => TrainValue::Str(s.clone()),
        Value::Tuple(items) => TrainValue::Tuple(items.iter().map(typed).collect::<Option<_>>()?),
        Value::Spec { name, args } => TrainValue::Spec {
            name: name.clone(),
            args: args
                .iter()
                .map(|(k, v)| typed(v).map(|t| (k.clone(), t)))
                .collect::<Option<_>>()?,
        },
        _ => return None,
    })
}
