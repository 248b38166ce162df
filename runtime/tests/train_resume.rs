//! End to end: a tiny model trained with Adam + plateau schedule, logged and checkpointed, then
//! resumed from the checkpoint in a "new process" — the resumed run must equal the straight run
//! bit for bit (parameters, learning rate, optimiser state).

use std::path::Path;

use ndarray::ArrayD;
use snn_runtime::train::checkpoint;
use snn_runtime::train::{
    LogRecord, Optimizer, OptimizerConfig, RunLog, Schedule, ScheduleState, TrainState, hash_ir,
    plot_run, read_log,
};

const IR: &str = "snn @tiny { linear 3 -> 1 }";
const EPOCHS: usize = 8;

fn names_shapes() -> Vec<(String, Vec<usize>)> {
    vec![("w".into(), vec![3]), ("b".into(), vec![])]
}

/// Loss and gradients of a least-squares fit y = w·x + b on a fixed data set, for epoch `e`
/// (the data order seed only decides which half of the data the epoch sees, like a shuffle).
fn loss_and_grads(params: &[ArrayD<f64>], epoch: usize, seed: u64) -> (f64, Vec<ArrayD<f64>>) {
    let mut gw = ArrayD::zeros(vec![3]);
    let mut gb = 0.0;
    let mut loss = 0.0;
    let n = 8;
    for i in 0..n {
        if (i as u64 + seed + epoch as u64).is_multiple_of(2) {
            continue;
        }
        let x = [i as f64 * 0.3, (i as f64).sin(), 1.0 - i as f64 * 0.1];
        let y = 0.7 * x[0] - 1.3 * x[1] + 0.2 * x[2] + 0.5;
        let pred = (0..3).map(|k| params[0][[k]] * x[k]).sum::<f64>() + params[1][[]];
        let r = pred - y;
        loss += r * r / n as f64;
        for k in 0..3 {
            gw[[k]] += 2.0 * r * x[k] / n as f64;
        }
        gb += 2.0 * r / n as f64;
    }
    (loss, vec![gw, ArrayD::from_elem(vec![], gb)])
}

struct Run {
    params: Vec<ArrayD<f64>>,
    opt: Optimizer,
    sched_state: ScheduleState,
    epoch: usize,
    step: u64,
}

const CONFIG: OptimizerConfig = OptimizerConfig::Adam {
    lr: 0.05,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 1e-3,
};
const SCHEDULE: Schedule = Schedule::Plateau {
    factor: 0.5,
    patience: 0,
    // A large relative threshold so this short run hits a plateau and the rate changes.
    threshold: 0.3,
    cooldown: 0,
    min_lr: 0.0,
};
const SEED: u64 = 7;

fn fresh() -> Run {
    let shapes: Vec<Vec<usize>> = names_shapes().into_iter().map(|(_, s)| s).collect();
    Run {
        params: vec![ArrayD::zeros(vec![3]), ArrayD::zeros(vec![])],
        opt: Optimizer::new(CONFIG, &shapes).expect("optimizer"),
        sched_state: ScheduleState::default(),
        epoch: 0,
        step: 0,
    }
}

fn train_until(run: &mut Run, until: usize, log: &mut RunLog) {
    while run.epoch < until {
        let lr = SCHEDULE.lr_for_epoch(CONFIG.lr(), run.epoch, &run.sched_state);
        let mut epoch_loss = 0.0;
        for _ in 0..4 {
            let (loss, grads) = loss_and_grads(&run.params, run.epoch, SEED);
            let grads: Vec<Option<ArrayD<f64>>> = grads.into_iter().map(Some).collect();
            run.opt.step(&mut run.params, &grads, lr).expect("step");
            run.step += 1;
            epoch_loss += loss / 4.0;
        }
        SCHEDULE.observe(&mut run.sched_state, CONFIG.lr(), epoch_loss);
        log.append(&LogRecord {
            epoch: run.epoch,
            step: run.step,
            split: "train".into(),
            loss: Some(epoch_loss),
            lr: Some(lr),
            ..Default::default()
        })
        .expect("log");
        run.epoch += 1;
    }
}

fn save(run: &Run, dir: &Path) {
    let named: Vec<(String, &ArrayD<f64>)> = names_shapes()
        .into_iter()
        .map(|(n, _)| n)
        .zip(&run.params)
        .collect();
    let history = read_log(dir).expect("log").records;
    let state = TrainState {
        format: checkpoint::STATE_FORMAT,
        model_name: "tiny".into(),
        ir_hash: hash_ir(IR),
        epoch: run.epoch,
        global_step: run.step,
        optimizer: run.opt.state(),
        schedule: run.sched_state.clone(),
        rng_state: vec![],
        data_order_seed: SEED,
        history,
        extra: Default::default(),
    };
    checkpoint::save(dir, &named, &state).expect("save");
}

fn resume(dir: &Path) -> Run {
    let (loaded, state) = checkpoint::load(dir).expect("load");
    state.check_ir_hash(dir, &hash_ir(IR)).expect("same model");
    let params = checkpoint::match_params(dir, loaded, &names_shapes()).expect("fits");
    Run {
        params,
        opt: Optimizer::from_state(CONFIG, state.optimizer).expect("optimizer"),
        sched_state: state.schedule,
        epoch: state.epoch,
        step: state.global_step,
    }
}

fn bits(a: &[ArrayD<f64>]) -> Vec<u64> {
    a.iter()
        .flat_map(|x| x.iter().map(|v| v.to_bits()))
        .collect()
}

#[test]
fn resumed_run_equals_straight_run_bit_for_bit() {
    let straight_dir = tempfile::tempdir().expect("tmp");
    let mut log = RunLog::open(straight_dir.path()).expect("log");
    let mut straight = fresh();
    train_until(&mut straight, EPOCHS, &mut log);
    assert!(
        straight.sched_state.reductions > 0,
        "the plateau rule should have fired"
    );

    let dir = tempfile::tempdir().expect("tmp");
    let mut log = RunLog::open(dir.path()).expect("log");
    let mut first = fresh();
    train_until(&mut first, 3, &mut log);
    save(&first, dir.path());
    // Work done after the checkpoint is lost in the "crash" (its log lines stay behind).
    train_until(&mut first, 5, &mut log);
    drop((first, log));

    let mut resumed = resume(dir.path());
    assert_eq!(resumed.epoch, 3);
    let mut log = RunLog::open(dir.path()).expect("log");
    train_until(&mut resumed, EPOCHS, &mut log);

    assert_eq!(bits(&resumed.params), bits(&straight.params));
    assert_eq!(resumed.sched_state, straight.sched_state);
    assert_eq!(resumed.step, straight.step);
    assert_eq!(resumed.opt.state(), straight.opt.state());

    // The log holds epochs 3 and 4 twice; the plot keeps the later ones.
    let records = read_log(dir.path()).expect("log").records;
    assert_eq!(records.len(), EPOCHS + 2);
    let plots = plot_run(dir.path()).expect("plots");
    assert_eq!(plots.len(), 1, "only loss was logged: {plots:?}");
}
