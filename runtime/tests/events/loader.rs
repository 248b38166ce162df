//! The batch loader on the bundled N-MNIST subset: order and augmentation determinism across
//! thread counts, each sample once per epoch, shapes, the frame cache and error propagation.

use std::collections::HashSet;
use std::fs;
use std::time::{Duration, Instant};

use ndarray::{Axis, s};
use snn_runtime::data::{Augment, Batch, Loader, LoaderConfig};
use snn_runtime::events::dataset::nmnist_list;
use snn_runtime::events::{EventError, FrameSpec, ReadOptions, Sample, frame};

use crate::common::example_data;

fn train() -> Vec<Sample> {
    nmnist_list(example_data().join("nmnist/train1K.txt")).expect("train list")
}

fn test_set() -> Vec<Sample> {
    nmnist_list(example_data().join("nmnist/test100.txt")).expect("test list")
}

fn config(batch: usize, workers: usize) -> LoaderConfig {
    LoaderConfig {
        workers,
        prefetch: 3,
        seed: 2024,
        ..LoaderConfig::new(batch)
    }
}

fn all_batches(loader: &Loader, epoch: u64) -> Vec<Batch> {
    loader
        .epoch(epoch)
        .collect::<Result<_, _>>()
        .expect("epoch")
}

const AUGMENT: Augment = Augment {
    crop_padding: 4,
    flip_horizontal: true,
    time_jitter_us: 0,
};

#[test]
fn same_batches_for_every_thread_count() {
    let samples: Vec<Sample> = train().into_iter().take(300).collect();
    let run = |workers| {
        let c = LoaderConfig {
            augment: AUGMENT,
            ..config(32, workers)
        };
        let l = Loader::new(samples.clone(), FrameSpec::event_count(8), c).expect("loader");
        all_batches(&l, 3)
    };
    let reference = run(1);
    for workers in [0, 2, 4] {
        assert!(run(workers) == reference, "{workers} workers differ from 1");
    }
}

#[test]
fn every_sample_exactly_once_per_epoch() {
    let samples = train();
    let l = Loader::new(samples.clone(), FrameSpec::frame_count(8), config(64, 4)).expect("loader");
    assert_eq!(l.batches_per_epoch(), 16);
    let mut orders = Vec::new();
    for epoch in 0..2 {
        let batches = all_batches(&l, epoch);
        let sizes: Vec<usize> = batches.iter().map(|b| b.labels.len()).collect();
        assert_eq!(sizes, [vec![64; 15], vec![40]].concat());
        let order: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        let distinct: HashSet<usize> = order.iter().copied().collect();
        assert_eq!((order.len(), distinct.len()), (1000, 1000));
        assert_eq!(order, l.order(epoch), "batches follow the published order");
        for b in &batches {
            let labels: Vec<u32> = b.indices.iter().map(|&i| samples[i].label).collect();
            assert_eq!(b.labels, labels);
        }
        orders.push(order);
    }
    assert_ne!(orders[0], orders[1], "each epoch reshuffles");
    assert_ne!(orders[0], (0..1000).collect::<Vec<_>>());

    let dropped = LoaderConfig {
        drop_last: true,
        ..config(64, 2)
    };
    let l = Loader::new(samples, FrameSpec::frame_count(8), dropped).expect("loader");
    let batches = all_batches(&l, 0);
    assert_eq!((l.batches_per_epoch(), batches.len()), (15, 15));
    assert!(batches.iter().all(|b| b.labels.len() == 64));
    let seen: HashSet<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(seen.len(), 960);
}

#[test]
fn batch_shapes_and_contents_match_framing_each_sample() {
    let samples = test_set();
    let c = LoaderConfig {
        shuffle: false,
        ..config(32, 2)
    };
    let spec = FrameSpec::event_count(8);
    let l = Loader::new(samples.clone(), spec, c).expect("loader");
    let batches = all_batches(&l, 0);
    let dims: Vec<_> = batches.iter().map(|b| b.frames.dim()).collect();
    assert_eq!(
        dims,
        vec![
            (8, 32, 2, 34, 34),
            (8, 32, 2, 34, 34),
            (8, 32, 2, 34, 34),
            (8, 4, 2, 34, 34)
        ]
    );
    assert_eq!(batches[0].indices, (0..32).collect::<Vec<_>>());
    assert_eq!(batches[0].labels[..3], [7, 2, 1]);
    // Slot b of a batch is exactly `frame` of its sample: time-major, nothing lost.
    for (b, &i) in batches[3].indices.iter().enumerate() {
        let want = frame(
            &samples[i].load(&ReadOptions::default()).expect("load"),
            &spec,
        )
        .expect("frame");
        assert_eq!(batches[3].frames.index_axis(Axis(1), b), want);
    }
}

#[test]
fn augmentation_is_seeded_per_sample() {
    let samples: Vec<Sample> = test_set().into_iter().take(40).collect();
    let spec = FrameSpec::event_count(8);
    let make = |augment, seed, workers| {
        let c = LoaderConfig {
            augment,
            seed,
            shuffle: false,
            ..config(8, workers)
        };
        Loader::new(samples.clone(), spec, c).expect("loader")
    };
    let plain = all_batches(&make(Augment::default(), 1, 2), 0);
    let a = all_batches(&make(AUGMENT, 1, 2), 0);
    assert!(
        a == all_batches(&make(AUGMENT, 1, 4), 0),
        "same seed, epoch"
    );
    assert!(
        a != all_batches(&make(AUGMENT, 1, 2), 1),
        "new epoch, new draws"
    );
    assert!(
        a != all_batches(&make(AUGMENT, 2, 2), 0),
        "new seed, new draws"
    );
    assert!(a != plain);
    // A crop only moves or drops events; it never invents any.
    for (x, p) in a.iter().zip(&plain) {
        for b in 0..x.labels.len() {
            let (got, base) = (
                x.frames.index_axis(Axis(1), b),
                p.frames.index_axis(Axis(1), b),
            );
            assert!(got.sum() <= base.sum());
        }
    }
    // Flip alone is an exact mirror for about half the samples and the identity for the rest.
    let flip = Augment {
        flip_horizontal: true,
        ..Augment::default()
    };
    let f = all_batches(&make(flip, 1, 2), 0);
    let mut flipped = 0;
    for (x, p) in f.iter().zip(&plain) {
        for b in 0..x.labels.len() {
            let got = x.frames.index_axis(Axis(1), b);
            let base = p.frames.index_axis(Axis(1), b);
            if got != base {
                assert_eq!(got, base.slice(s![.., .., .., ..;-1]));
                flipped += 1;
            }
        }
    }
    assert!((8..=32).contains(&flipped), "{flipped} of 40 flipped");
}

#[test]
fn time_jitter_shifts_windows_deterministically() {
    let samples: Vec<Sample> = test_set().into_iter().take(16).collect();
    let spec = FrameSpec::time_window(10_000, 8);
    let make = |jitter| {
        let c = LoaderConfig {
            augment: Augment {
                time_jitter_us: jitter,
                ..Augment::default()
            },
            shuffle: false,
            ..config(16, 2)
        };
        Loader::new(samples.clone(), spec, c).expect("loader")
    };
    let base = all_batches(&make(0), 0);
    let j = all_batches(&make(5_000), 0);
    assert!(j == all_batches(&make(5_000), 0));
    assert!(j != base);
    assert_eq!(j[0].frames.dim(), (8, 16, 2, 34, 34));

    let bad = |c: LoaderConfig, spec| match Loader::new(samples.clone(), spec, c) {
        Err(EventError::Spec(m)) => m,
        other => panic!("expected a Spec error, got {other:?}"),
    };
    let jitter = Augment {
        time_jitter_us: 100,
        ..Augment::default()
    };
    let m = bad(
        LoaderConfig {
            augment: jitter,
            ..config(4, 1)
        },
        FrameSpec::event_count(8),
    );
    assert!(m.contains("TimeWindow"), "{m}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let m = bad(
        LoaderConfig {
            augment: jitter,
            cache_dir: Some(tmp.path().to_path_buf()),
            ..config(4, 1)
        },
        spec,
    );
    assert!(m.contains("cache"), "{m}");
    assert!(bad(config(0, 1), spec).contains("batch size"));
    assert!(bad(config(4, 1), FrameSpec::event_count(0)).contains("steps"));
}

#[test]
fn cached_frames_give_the_same_batches() {
    let samples: Vec<Sample> = train().into_iter().take(50).collect();
    let tmp = tempfile::tempdir().expect("tempdir");
    let spec = FrameSpec::frame_count(8);
    let plain = Loader::new(
        samples.clone(),
        spec,
        LoaderConfig {
            augment: AUGMENT,
            ..config(16, 2)
        },
    )
    .expect("loader");
    let cached = Loader::new(
        samples,
        spec,
        LoaderConfig {
            augment: AUGMENT,
            cache_dir: Some(tmp.path().join("cache")),
            ..config(16, 2)
        },
    )
    .expect("loader");
    let want = all_batches(&plain, 5);
    assert!(all_batches(&cached, 5) == want, "cold cache");
    assert_eq!(
        fs::read_dir(tmp.path().join("cache")).expect("dir").count(),
        50
    );
    assert!(all_batches(&cached, 5) == want, "warm cache");
}

#[test]
fn a_corrupt_file_ends_the_epoch_with_an_error_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut samples: Vec<Sample> = test_set().into_iter().take(30).collect();
    for s in &mut samples {
        let to = tmp.path().join(s.path.file_name().expect("name"));
        fs::copy(&s.path, &to).expect("copy");
        s.path = to;
    }
    // Cut sample 17 mid-event: 5-byte records, so 7 bytes leave a partial one.
    let bytes = fs::read(&samples[17].path).expect("read");
    fs::write(&samples[17].path, &bytes[..7]).expect("truncate");
    let bad_name = samples[17].path.clone();
    for workers in [0, 1, 2, 4] {
        for cache in [false, true] {
            let c = LoaderConfig {
                cache_dir: cache.then(|| tmp.path().join(format!("cache{workers}"))),
                ..config(4, workers)
            };
            let l = Loader::new(samples.clone(), FrameSpec::event_count(8), c).expect("loader");
            let pos = l.order(0).iter().position(|&i| i == 17).expect("visited");
            let started = Instant::now();
            let results: Vec<_> = l.epoch(0).collect();
            assert!(started.elapsed() < Duration::from_secs(30), "no hang");
            assert_eq!(
                results.len(),
                pos / 4 + 1,
                "the epoch ends at the bad batch"
            );
            assert!(results[..pos / 4].iter().all(Result::is_ok));
            let e = results[pos / 4].as_ref().expect_err("error");
            assert!(
                matches!(e, EventError::Truncated { file, .. } if *file == bad_name),
                "{e}"
            );
            assert!(e.to_string().contains(&*bad_name.to_string_lossy()));
        }
    }
    // A missing file is an I/O error naming it, too.
    samples[3].path = tmp.path().join("missing.bs2");
    let l = Loader::new(samples, FrameSpec::event_count(8), config(8, 2)).expect("loader");
    let err = l
        .epoch(0)
        .find_map(Result::err)
        .expect("the missing file fails");
    assert!(matches!(err, EventError::Io { .. }) && err.to_string().contains("missing.bs2"));
}

#[test]
fn framing_errors_name_the_sample() {
    // Events outside the FrameSpec's sensor are a framing error of that sample's data.
    let spec = FrameSpec::event_count(4).sensor(8, 8);
    let c = LoaderConfig {
        shuffle: false,
        ..config(4, 2)
    };
    let l = Loader::new(test_set(), spec, c).expect("loader");
    let err = l
        .epoch(0)
        .find_map(Result::err)
        .expect("events outside 8x8");
    assert!(
        matches!(&err, EventError::Invalid { file, .. } if file.ends_with("60001.bs2")),
        "{err}"
    );
    assert!(err.to_string().contains("outside the 8x8 sensor"), "{err}");
}
