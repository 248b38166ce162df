//! Checkpoint round trip, crash recovery under the documented rule, and clean errors on damage.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use ndarray::ArrayD;
use snn_runtime::train::checkpoint::{
    self, CHECKPOINT_DIR, CHECKPOINT_OLD_DIR, PARAMS_FILE, STATE_FILE,
};
use snn_runtime::train::{
    LogRecord, Optimizer, OptimizerConfig, ScheduleState, TrainError, TrainState, hash_ir,
};

fn params() -> Vec<(String, ArrayD<f64>)> {
    vec![
        // Names out of alphabetical order: load must return the saved (positional) order.
        (
            "conv0.weight".to_string(),
            ArrayD::from_shape_fn(vec![2, 3, 3], |ix| {
                (ix[0] as f64 * 0.1 + ix[1] as f64).sin() / 3.0
            }),
        ),
        (
            "bn0.bias".to_string(),
            ArrayD::from_shape_vec(vec![3], vec![f64::NAN, -0.0, 5e-324]).expect("shape"),
        ),
        ("alpha".to_string(), ArrayD::from_elem(vec![], 0.1 + 0.2)),
    ]
}

fn state(epoch: usize) -> TrainState {
    let shapes: Vec<Vec<usize>> = params().iter().map(|(_, a)| a.shape().to_vec()).collect();
    let mut opt = Optimizer::new(OptimizerConfig::adam(1e-3), &shapes).expect("optimizer");
    let mut p: Vec<ArrayD<f64>> = params().into_iter().map(|(_, a)| a).collect();
    let grads: Vec<Option<ArrayD<f64>>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| (i != 1).then(|| ArrayD::from_elem(s.clone(), 0.3)))
        .collect();
    opt.step(&mut p, &grads, 1e-3).expect("step");
    TrainState {
        format: checkpoint::STATE_FORMAT,
        model_name: "golden_small".into(),
        ir_hash: hash_ir("module @m {}"),
        epoch,
        global_step: 10 * epoch as u64,
        optimizer: opt.state(),
        schedule: ScheduleState {
            best: Some(0.5),
            num_bad_epochs: 1,
            ..Default::default()
        },
        rng_state: vec![u64::MAX, 1, 2, 3],
        data_order_seed: 42,
        history: vec![LogRecord {
            epoch: 0,
            step: 10,
            split: "train".into(),
            loss: Some(1.25),
            firing_rates: BTreeMap::from([("lif0".into(), 0.1)]),
            ..Default::default()
        }],
        extra: BTreeMap::from([("batch_size".into(), serde_json::json!(16))]),
    }
}

fn save(run_dir: &Path, epoch: usize) {
    let p = params();
    let refs: Vec<(String, &ArrayD<f64>)> = p.iter().map(|(n, a)| (n.clone(), a)).collect();
    checkpoint::save(run_dir, &refs, &state(epoch)).expect("save");
}

fn bits(a: &ArrayD<f64>) -> Vec<u64> {
    a.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn round_trip_is_bit_exact_and_keeps_order() {
    let dir = tempfile::tempdir().expect("tmp");
    save(dir.path(), 3);
    let (loaded, st) = checkpoint::load(dir.path()).expect("load");
    let want = params();
    assert_eq!(loaded.len(), want.len());
    for ((n, a), (wn, wa)) in loaded.iter().zip(&want) {
        assert_eq!(n, wn);
        assert_eq!(a.shape(), wa.shape());
        assert_eq!(bits(a), bits(wa), "{n}");
    }
    assert_eq!(st, state(3));
    st.check_ir_hash(dir.path(), &hash_ir("module @m {}"))
        .expect("same model");
    let err = st
        .check_ir_hash(dir.path(), &hash_ir("module @other {}"))
        .expect_err("must fail");
    assert!(matches!(err, TrainError::IrHashMismatch { .. }));
    assert!(err.to_string().contains("different model"), "{err}");
    // Only the final directory remains.
    let names: Vec<String> = fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [CHECKPOINT_DIR]);
    // The resumed optimiser accepts the state.
    Optimizer::from_state(OptimizerConfig::adam(1e-3), st.optimizer).expect("resume");
}

#[test]
fn second_save_replaces_the_first() {
    let dir = tempfile::tempdir().expect("tmp");
    save(dir.path(), 1);
    save(dir.path(), 2);
    let (_, st) = checkpoint::load(dir.path()).expect("load");
    assert_eq!(st.epoch, 2);
    assert!(!dir.path().join(CHECKPOINT_OLD_DIR).exists());
}

#[test]
fn crash_leftovers_recover_by_the_rule() {
    let dir = tempfile::tempdir().expect("tmp");
    let run = dir.path();
    save(run, 1);
    // Crash during a save: a half-written tmp dir next to the good checkpoint is ignored.
    let tmp = run.join(format!("{CHECKPOINT_DIR}.tmp-99999"));
    fs::create_dir(&tmp).expect("mkdir");
    fs::write(tmp.join(PARAMS_FILE), b"garbage").expect("write");
    assert_eq!(checkpoint::load(run).expect("load").1.epoch, 1);

    // Crash between "checkpoint → checkpoint.old" and "tmp → checkpoint": only .old exists.
    fs::rename(run.join(CHECKPOINT_DIR), run.join(CHECKPOINT_OLD_DIR)).expect("mv");
    assert!(checkpoint::exists(run));
    assert_eq!(checkpoint::load(run).expect("load from .old").1.epoch, 1);

    // The next save must keep .old until the new checkpoint is in place, then clean up.
    save(run, 2);
    assert_eq!(checkpoint::load(run).expect("load").1.epoch, 2);
    assert!(!run.join(CHECKPOINT_OLD_DIR).exists());

    // Crash after the new checkpoint landed but before .old was deleted: the new one wins.
    fs::create_dir(run.join(CHECKPOINT_OLD_DIR)).expect("mkdir");
    assert_eq!(checkpoint::load(run).expect("load").1.epoch, 2);
    save(run, 3);
    assert_eq!(checkpoint::load(run).expect("load").1.epoch, 3);
}

#[test]
fn missing_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let err = checkpoint::load(dir.path()).expect_err("must fail");
    assert!(matches!(err, TrainError::NoCheckpoint { .. }), "{err}");
    assert!(err.to_string().contains("no checkpoint"), "{err}");
    save(dir.path(), 1);
    fs::remove_file(dir.path().join(CHECKPOINT_DIR).join(STATE_FILE)).expect("rm");
    let err = checkpoint::load(dir.path())
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("state.json"), "{err}");
}

#[test]
fn corrupt_safetensors_names_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    save(dir.path(), 1);
    let file = dir.path().join(CHECKPOINT_DIR).join(PARAMS_FILE);
    let bytes = fs::read(&file).expect("read");
    // Truncated file.
    fs::write(&file, &bytes[..bytes.len() - 5]).expect("write");
    let err = checkpoint::load(dir.path()).expect_err("must fail");
    assert!(matches!(err, TrainError::Safetensors { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("params.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );
    // Garbage header.
    fs::write(&file, b"\xff\xff\xff\xff\xff\xff\xff\x7fxyz").expect("write");
    let msg = checkpoint::load(dir.path())
        .expect_err("must fail")
        .to_string();
    assert!(msg.contains("params.safetensors"), "{msg}");
    // Empty file.
    fs::write(&file, b"").expect("write");
    let msg = checkpoint::load(dir.path())
        .expect_err("must fail")
        .to_string();
    assert!(msg.contains("params.safetensors"), "{msg}");
}

#[test]
fn wrong_dtype_and_shape_mismatch_are_reported_by_name() {
    let dir = tempfile::tempdir().expect("tmp");
    save(dir.path(), 1);
    // A valid safetensors file with an F32 tensor.
    let data = [0u8; 8];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data)
        .expect("view");
    let image = safetensors::tensor::serialize([("w", view)], None).expect("serialize");
    let file = dir.path().join(CHECKPOINT_DIR).join(PARAMS_FILE);
    fs::write(&file, image).expect("write");
    let msg = checkpoint::load(dir.path())
        .expect_err("must fail")
        .to_string();
    assert!(
        msg.contains("\"w\"") && msg.contains("F32") && msg.contains("F64"),
        "{msg}"
    );

    save(dir.path(), 1);
    let (loaded, _) = checkpoint::load(dir.path()).expect("load");
    let expected = vec![
        ("alpha".to_string(), vec![]),
        ("conv0.weight".to_string(), vec![2, 3, 4]),
        ("fc.weight".to_string(), vec![1]),
    ];
    let msg = checkpoint::match_params(dir.path(), loaded.clone(), &expected)
        .expect_err("must fail")
        .to_string();
    assert!(
        msg.contains("\"conv0.weight\" has shape [2, 3, 3], the model expects [2, 3, 4]"),
        "{msg}"
    );
    assert!(msg.contains("\"fc.weight\" is missing"), "{msg}");
    assert!(msg.contains("\"bn0.bias\" is not a parameter"), "{msg}");
    // In the model's order, whatever the saved order.
    let expected = vec![
        ("alpha".to_string(), vec![]),
        ("bn0.bias".to_string(), vec![3]),
        ("conv0.weight".to_string(), vec![2, 3, 3]),
    ];
    let ordered = checkpoint::match_params(dir.path(), loaded, &expected).expect("fits");
    assert_eq!(ordered[0].ndim(), 0);
    assert_eq!(ordered[1].shape(), &[3]);
}

#[test]
fn duplicate_parameter_names_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = ArrayD::from_elem(vec![1], 1.0);
    let err = checkpoint::save(dir.path(), &[("w".into(), &a), ("w".into(), &a)], &state(0))
        .expect_err("must fail");
    assert!(err.to_string().contains("appears twice"), "{err}");
    assert!(!checkpoint::exists(dir.path()));
}
