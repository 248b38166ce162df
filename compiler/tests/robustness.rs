//! Bounded random-input tests: the front end and sema never panic, whatever the input. Inputs are
//! mutations of the real examples (so they reach deep into sema) and raw random bytes.

mod common;

use snnc::sema::compile_source;
use std::path::Path;

/// A small deterministic generator (xorshift64*), so failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "->",
    "+",
    "(",
    ")",
    "{",
    "}",
    ",",
    "=",
    "let ",
    "repeat 3 { ",
    "0",
    "-1",
    "1e309",
    "25ms",
    "\"",
    "flatten",
    "LIF",
    "conv(4, 3)",
    "attend(SA())",
    "readout.rate",
    "input",
    "state v = 0.0\n",
    "fire(",
    "\n",
    "model M() {",
    "block B() {",
    "T = 0",
    "pool.avg(99)",
    "linear(3)",
    "x",
    "^",
    "/",
    "*",
    "import std.neurons.*\n",
    "none",
    "true",
    "é",
    "\u{0}",
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let pos = rng.below(chars.len() + 1);
        match rng.below(3) {
            0 if !chars.is_empty() => {
                let end = (pos + 1 + rng.below(12)).min(chars.len());
                chars.drain(pos.min(chars.len())..end);
            }
            1 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                for (i, c) in token.chars().enumerate() {
                    chars.insert(pos.min(chars.len()) + i, c);
                }
            }
            _ => {
                if pos < chars.len() {
                    chars[pos] = char::from(b' ' + (rng.below(95) as u8));
                }
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn mutated_examples_never_panic() {
    let mut sources: Vec<(String, String)> = common::snn_files("examples");
    sources.extend(common::snn_files("stdlib"));
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for i in 0..1500 {
        let (rel, text) = &sources[i % sources.len()];
        let mutated = mutate(&mut rng, text);
        let result = std::panic::catch_unwind(|| {
            let c = compile_source(Path::new(rel), mutated.clone(), &[]);
            c.diags.render_plain(&c.program.sources)
        });
        assert!(result.is_ok(), "panic on mutation {i} of {rel}:\n{mutated}");
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    for _ in 0..500 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let c = compile_source(Path::new("random.snn"), text, &[]);
        let _ = c.diags.render_plain(&c.program.sources);
    }
}
