//! Symbolic differentiation of the scalar programs inside neuron scans: ∂expr/∂var as another
//! scalar expression, with `fire` differentiated through its surrogate. This is what makes
//! user-written neuron equations trainable without compiler changes.

use crate::ir::scalar::*;

/// Replaces every `Var::Input` in a surrogate's derivative by `arg` (the value fired on).
pub fn substitute_input(e: &Scalar, arg: &Scalar) -> Scalar {
    match e {
        Scalar::Var(Var::Input) => arg.clone(),
        Scalar::Const(_) | Scalar::Var(_) => e.clone(),
        Scalar::Unary(op, x) => Scalar::unary(*op, substitute_input(x, arg)),
        Scalar::Binary(op, a, b) => {
            Scalar::binary(*op, substitute_input(a, arg), substitute_input(b, arg))
        }
        Scalar::Select(c, a, b) => Scalar::select(
            substitute_input(c, arg),
            substitute_input(a, arg),
            substitute_input(b, arg),
        ),
        Scalar::Fire {
            arg: inner,
            surrogate,
        } => Scalar::Fire {
            arg: Box::new(substitute_input(inner, arg)),
            surrogate: *surrogate,
        },
    }
}

fn c(v: f64) -> Scalar {
    Scalar::Const(v)
}

fn mul(a: Scalar, b: Scalar) -> Scalar {
    Scalar::binary(ScalarBinary::Mul, a, b)
}

fn add(a: Scalar, b: Scalar) -> Scalar {
    Scalar::binary(ScalarBinary::Add, a, b)
}

fn sub(a: Scalar, b: Scalar) -> Scalar {
    Scalar::binary(ScalarBinary::Sub, a, b)
}

fn div(a: Scalar, b: Scalar) -> Scalar {
    Scalar::binary(ScalarBinary::Div, a, b)
}

/// ∂e/∂wrt. `surrogates` gives each `fire`'s surrogate derivative (in `Var::Input` = x).
pub fn diff(e: &Scalar, wrt: Var, surrogates: &[SurrogateProgram]) -> Scalar {
    match e {
        Scalar::Const(_) => c(0.0),
        Scalar::Var(v) => c(if *v == wrt { 1.0 } else { 0.0 }),
        Scalar::Unary(op, x) => {
            let dx = diff(x, wrt, surrogates);
            if dx == c(0.0) {
                return c(0.0);
            }
            let x = (**x).clone();
            let local = match op {
                ScalarUnary::Neg => c(-1.0),
                ScalarUnary::Not | ScalarUnary::Detach => return c(0.0),
                ScalarUnary::Exp => Scalar::unary(ScalarUnary::Exp, x),
                ScalarUnary::Log => div(c(1.0), x),
                ScalarUnary::Sqrt => div(c(0.5), Scalar::unary(ScalarUnary::Sqrt, x)),
                // sign(x), with 0 at the kink (PyTorch's convention).
                ScalarUnary::Abs => sub(
                    Scalar::binary(ScalarBinary::Gt, x.clone(), c(0.0)),
                    Scalar::binary(ScalarBinary::Lt, x, c(0.0)),
                ),
                ScalarUnary::Sigmoid => {
                    let s = Scalar::unary(ScalarUnary::Sigmoid, x);
                    mul(s.clone(), sub(c(1.0), s))
                }
                ScalarUnary::Tanh => {
                    let t = Scalar::unary(ScalarUnary::Tanh, x);
                    sub(c(1.0), mul(t.clone(), t))
                }
                ScalarUnary::Atan => div(c(1.0), add(c(1.0), mul(x.clone(), x))),
                ScalarUnary::Relu => Scalar::binary(ScalarBinary::Gt, x, c(0.0)),
            };
            mul(local, dx)
        }
        Scalar::Binary(op, a, b) => {
            if op.is_predicate() {
                return c(0.0);
            }
            let da = diff(a, wrt, surrogates);
            let db = diff(b, wrt, surrogates);
            let (a, b) = ((**a).clone(), (**b).clone());
            match op {
                ScalarBinary::Add => add(da, db),
                ScalarBinary::Sub => sub(da, db),
                ScalarBinary::Mul => add(mul(da, b), mul(a, db)),
                // (da·b − a·db) / b², written to keep the common constant-divisor case short.
                ScalarBinary::Div => {
                    if db == c(0.0) {
                        div(da, b)
                    } else {
                        div(sub(mul(da, b.clone()), mul(a, db)), mul(b.clone(), b))
                    }
                }
                ScalarBinary::Pow => {
                    let term_a = if da == c(0.0) {
                        c(0.0)
                    } else {
                        mul(
                            mul(
                                b.clone(),
                                Scalar::binary(
                                    ScalarBinary::Pow,
                                    a.clone(),
                                    sub(b.clone(), c(1.0)),
                                ),
                            ),
                            da,
                        )
                    };
                    let term_b = if db == c(0.0) {
                        c(0.0)
                    } else {
                        mul(
                            mul(
                                Scalar::unary(ScalarUnary::Log, a.clone()),
                                Scalar::binary(ScalarBinary::Pow, a, b),
                            ),
                            db,
                        )
                    };
                    add(term_a, term_b)
                }
                // The gradient goes to the chosen operand (ties: the first, as PyTorch's min/max).
                ScalarBinary::Min | ScalarBinary::Max => {
                    let pred = if *op == ScalarBinary::Min {
                        ScalarBinary::Le
                    } else {
                        ScalarBinary::Ge
                    };
                    Scalar::select(Scalar::binary(pred, a, b), da, db)
                }
                _ => c(0.0),
            }
        }
        Scalar::Select(cond, a, b) => {
            let (da, db) = (diff(a, wrt, surrogates), diff(b, wrt, surrogates));
            if da == c(0.0) && db == c(0.0) {
                return c(0.0);
            }
            Scalar::select((**cond).clone(), da, db)
        }
        Scalar::Fire { arg, surrogate } => {
            let darg = diff(arg, wrt, surrogates);
            if darg == c(0.0) {
                return c(0.0);
            }
            let Some(s) = surrogates.get(*surrogate) else {
                return c(0.0);
            };
            mul(substitute_input(&s.derivative, arg), darg)
        }
    }
}

/// Every variable an expression reads, in first-use order.
pub fn reads(e: &Scalar) -> Vec<Var> {
    let mut out = Vec::new();
    e.visit(&mut |s| {
        if let Scalar::Var(v) = s
            && !out.contains(v)
        {
            out.push(*v);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(e: &Scalar, x: f64) -> f64 {
        match e {
            Scalar::Const(c) => *c,
            Scalar::Var(_) => x,
            Scalar::Unary(op, a) => op.eval(eval(a, x)),
            Scalar::Binary(op, a, b) => op.eval(eval(a, x), eval(b, x)),
            Scalar::Select(c, a, b) => {
                if eval(c, x) != 0.0 {
                    eval(a, x)
                } else {
                    eval(b, x)
                }
            }
            Scalar::Fire { arg, .. } => f64::from(eval(arg, x) >= 0.0),
        }
    }

    #[test]
    fn derivatives_match_central_differences() {
        let x = || Scalar::Var(Var::State(0));
        let exprs = vec![
            Scalar::binary(ScalarBinary::Mul, x(), Scalar::unary(ScalarUnary::Exp, x())),
            Scalar::binary(
                ScalarBinary::Div,
                Scalar::Const(2.0),
                Scalar::binary(ScalarBinary::Add, x(), Scalar::Const(3.0)),
            ),
            Scalar::binary(ScalarBinary::Pow, x(), Scalar::Const(3.0)),
            Scalar::unary(
                ScalarUnary::Sigmoid,
                Scalar::binary(ScalarBinary::Mul, x(), Scalar::Const(4.0)),
            ),
            Scalar::unary(ScalarUnary::Tanh, x()),
            Scalar::unary(ScalarUnary::Atan, x()),
            Scalar::unary(
                ScalarUnary::Log,
                Scalar::binary(ScalarBinary::Add, x(), Scalar::Const(5.0)),
            ),
            Scalar::unary(
                ScalarUnary::Sqrt,
                Scalar::binary(ScalarBinary::Add, x(), Scalar::Const(5.0)),
            ),
            Scalar::binary(ScalarBinary::Max, x(), Scalar::Const(0.1)),
            Scalar::unary(ScalarUnary::Abs, x()),
        ];
        for e in exprs {
            let d = diff(&e, Var::State(0), &[]);
            for x0 in [-0.7, 0.3, 1.9] {
                let h = 1e-6;
                let numeric = (eval(&e, x0 + h) - eval(&e, x0 - h)) / (2.0 * h);
                let analytic = eval(&d, x0);
                assert!(
                    (numeric - analytic).abs() < 1e-6 * numeric.abs().max(1.0),
                    "{e:?} at {x0}: {numeric} vs {analytic}"
                );
            }
        }
    }

    #[test]
    fn fire_uses_the_surrogate_and_detach_blocks() {
        let sur = SurrogateProgram {
            name: "tri".into(),
            args: vec![],
            derivative: Scalar::binary(
                ScalarBinary::Sub,
                Scalar::Const(1.0),
                Scalar::unary(ScalarUnary::Abs, Scalar::Var(Var::Input)),
            ),
        };
        let v = Scalar::Var(Var::State(0));
        let fire = Scalar::Fire {
            arg: Box::new(Scalar::binary(
                ScalarBinary::Sub,
                v.clone(),
                Scalar::Const(1.0),
            )),
            surrogate: 0,
        };
        let d = diff(&fire, Var::State(0), std::slice::from_ref(&sur));
        assert!((eval(&d, 1.25) - 0.75).abs() < 1e-12);
        let detached = Scalar::unary(ScalarUnary::Detach, v);
        assert_eq!(diff(&detached, Var::State(0), &[sur]), Scalar::Const(0.0));
    }
}
