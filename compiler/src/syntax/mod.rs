//! The front end: the pest grammar, the AST with spans, and the parser between them.

pub mod ast;
pub mod parser;

pub use parser::{parse, parse_expr};
