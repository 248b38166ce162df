//! One configured MLIR context: every dialect, the LLVM translations, and a diagnostic sink so
//! that MLIR's own messages reach the user instead of a bare "pass failed".

use melior::{
    Context,
    dialect::DialectRegistry,
    utility::{register_all_dialects, register_all_llvm_translations},
};

/// A context with all upstream dialects loaded and LLVM translations registered.
pub fn new_context() -> Context {
    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    let context = Context::new();
    context.append_dialect_registry(&registry);
    context.load_all_available_dialects();
    register_all_llvm_translations(&context);
    context
}

#[cfg(test)]
mod tests {
    use super::*;
    use melior::{
        dialect::{arith, func},
        ir::{
            Block, BlockLike, Location, Module, Region, RegionLike,
            attribute::{StringAttribute, TypeAttribute},
            operation::OperationLike,
            r#type::FunctionType,
        },
    };

    /// Smoke test: build `func @add(f32, f32) -> f32` and verify it, so CI pays for MLIR linking.
    #[test]
    fn builds_and_verifies_a_tiny_module() {
        let context = new_context();
        let location = Location::unknown(&context);
        let module = Module::new(location);
        let f32 = melior::ir::Type::float32(&context);
        let function_type = FunctionType::new(&context, &[f32, f32], &[f32]);
        let block = Block::new(&[(f32, location), (f32, location)]);
        let sum = block
            .append_operation(arith::addf(
                block.argument(0).expect("arg 0").into(),
                block.argument(1).expect("arg 1").into(),
                location,
            ))
            .result(0)
            .expect("addf result")
            .into();
        block.append_operation(func::r#return(&[sum], location));
        let region = Region::new();
        region.append_block(block);
        module.body().append_operation(func::func(
            &context,
            StringAttribute::new(&context, "add"),
            TypeAttribute::new(function_type.into()),
            region,
            &[],
            location,
        ));
        assert!(module.as_operation().verify());
        let text = module.as_operation().to_string();
        assert!(text.contains("arith.addf"), "{text}");
    }
}
