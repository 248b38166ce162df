//! Dataset layouts (N-MNIST lists, folder per class, DVS128 Gesture trials) and the frame cache.

use std::fs;

use snn_runtime::events::dataset::{self, Split};
use snn_runtime::events::{EventError, FrameCache, FrameSpec, ReadOptions, Sample, frame};

use crate::common::{example_data, shared_data};
use crate::fixtures;

#[test]
fn nmnist_lists_match_the_readme_class_counts() {
    let dir = example_data().join("nmnist");
    let train = dataset::nmnist_list(dir.join("train1K.txt")).expect("train");
    let test = dataset::nmnist_list(dir.join("test100.txt")).expect("test");
    assert_eq!((train.len(), test.len()), (1_000, 100));
    let counts = |s: &[Sample]| {
        (0..10)
            .map(|c| s.iter().filter(|x| x.label == c).count())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        counts(&train),
        vec![97, 116, 99, 93, 105, 92, 94, 117, 87, 100]
    );
    assert_eq!(counts(&test), vec![8, 14, 8, 11, 14, 7, 10, 15, 2, 11]);
    let first: Vec<u32> = train.iter().take(10).map(|s| s.label).collect();
    assert_eq!(first, vec![5, 0, 4, 1, 9, 2, 1, 3, 1, 4], "MNIST order");
    let first: Vec<u32> = test.iter().take(10).map(|s| s.label).collect();
    assert_eq!(first, vec![7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    assert!(test[0].path.ends_with("60001.bs2"));
    assert_eq!(
        test[0].load(&ReadOptions::default()).expect("load").len(),
        3_330
    );
}

#[test]
fn nmnist_list_errors_name_the_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let list = tmp.path().join("list.txt");
    fs::write(tmp.path().join("1.bs2"), []).expect("write");
    fs::write(&list, "#sample #class\r\n1\t5\r\n2\t3\r\n").expect("write");
    let e = dataset::nmnist_list(&list).expect_err("missing 2.bs2");
    assert!(
        matches!(e, EventError::BadLine { line: 3, .. }) && e.to_string().contains("2.bs2"),
        "{e}"
    );
    fs::write(&list, "#sample #class\n1\tfive\n").expect("write");
    assert!(matches!(
        dataset::nmnist_list(&list),
        Err(EventError::BadLine { line: 2, .. })
    ));
}

#[test]
fn folder_per_class_layout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (class, files) in [
        ("cat", vec!["b.bs2", "a.bs2", "notes.txt"]),
        ("ant", vec!["z.npy"]),
    ] {
        fs::create_dir(tmp.path().join(class)).expect("mkdir");
        for f in files {
            fs::write(tmp.path().join(class).join(f), []).expect("write");
        }
    }
    fs::write(tmp.path().join("README"), []).expect("write");
    let (classes, samples) = dataset::folder_per_class(tmp.path()).expect("scan");
    assert_eq!(classes, vec!["ant", "cat"]);
    let got: Vec<(String, u32)> = samples
        .iter()
        .map(|s| {
            (
                s.path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned(),
                s.label,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("z.npy".into(), 0),
            ("a.bs2".into(), 1),
            ("b.bs2".into(), 1)
        ]
    );
}

#[test]
fn dvs_gesture_layout_with_real_labels() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    // The real user01 labels when shared data is present, else a two-row stand-in.
    let csv = match shared_data("dvs_gesture_layout_with_real_labels (using a stand-in CSV)") {
        Some(dir) => {
            fs::read_to_string(dir.join("dvs_gesture/user01_natural_labels.csv")).expect("csv")
        }
        None => "class,startTime_usec,endTime_usec\n1,53036986,59508469\n11,171367247,177991967\n"
            .into(),
    };
    let rows = csv.lines().count() - 1;
    let ev = fixtures::synthetic(130_000, 128, 128, 50_000_000, 997);
    fs::write(
        root.join("user01_natural.aedat"),
        fixtures::aedat31(&ev, 4096),
    )
    .expect("write");
    fs::write(root.join("user01_natural_labels.csv"), &csv).expect("write");
    fs::write(root.join("trials_to_train.txt"), "user01_natural.aedat\n\n").expect("write");
    fs::write(root.join("trials_to_test.txt"), "user02_natural.aedat\n").expect("write");

    let samples = dataset::dvs_gesture(root, Split::Train).expect("train");
    assert_eq!(samples.len(), rows);
    assert_eq!(samples[0].label, 0);
    assert_eq!(samples[0].range, Some((53_036_986, 59_508_469)));
    assert_eq!(samples.last().expect("rows").label, 10);
    let loaded =
        dataset::load_dvs_gesture(root, Split::Train, &ReadOptions::default()).expect("load");
    assert_eq!(loaded.len(), rows);
    for (s, events) in &loaded {
        let (start, end) = s.range.expect("range");
        assert_eq!(
            events.len(),
            ev.t.iter().filter(|&&t| t >= start && t < end).count()
        );
        assert_eq!(*events, s.load(&ReadOptions::default()).expect("load one"));
    }
    let e = dataset::dvs_gesture(root, Split::Test).expect_err("missing recording");
    assert!(
        matches!(e, EventError::BadLine { line: 1, .. })
            && e.to_string().contains("trials_to_test.txt"),
        "{e}"
    );
}

#[test]
fn frame_cache_hits_and_invalidates_on_content_change() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("s.bs2");
    let ev = fixtures::synthetic(2_000, 34, 34, 0, 150);
    fs::write(&src, fixtures::nmnist(&ev)).expect("write");
    let cache = FrameCache::new(tmp.path().join("cache")).expect("cache");
    let sample = Sample {
        path: src.clone(),
        label: 3,
        range: None,
    };
    let spec = FrameSpec::frame_count(8);
    let opts = ReadOptions::default();

    let entry = cache.entry(&sample, &spec, &opts).expect("entry");
    assert!(!entry.exists());
    let first = cache.frames(&sample, &spec, &opts).expect("miss");
    assert_eq!(first, frame(&ev, &spec).expect("direct"));
    assert!(entry.is_file());
    // A hit returns the stored tensor (proved by planting a different one).
    let planted = ndarray::Array4::<f32>::ones((1, 2, 1, 1));
    snn_runtime::events::save_frames_npy(&planted, &entry).expect("plant");
    assert_eq!(cache.frames(&sample, &spec, &opts).expect("hit"), planted);
    // Other parameters or a range are other entries.
    assert_ne!(
        cache
            .entry(&sample, &FrameSpec::frame_count(9), &opts)
            .expect("e"),
        entry
    );
    let ranged = Sample {
        range: Some((0, 1000)),
        ..sample.clone()
    };
    assert_ne!(cache.entry(&ranged, &spec, &opts).expect("e"), entry);
    // Changing the file's bytes changes the key.
    fs::write(&src, fixtures::nmnist(&ev.time_range(0, 100_000))).expect("rewrite");
    let new_entry = cache.entry(&sample, &spec, &opts).expect("entry");
    assert_ne!(new_entry, entry);
    assert_eq!(
        cache
            .frames(&sample, &spec, &opts)
            .expect("recompute")
            .sum(),
        ev.time_range(0, 100_000).len() as f32
    );
    // A damaged entry is recomputed, not returned.
    fs::write(&new_entry, b"junk").expect("damage");
    assert_eq!(
        cache.frames(&sample, &spec, &opts).expect("repair").dim(),
        (8, 2, 34, 34)
    );
    // Only finished entries are left in the directory.
    for f in fs::read_dir(tmp.path().join("cache")).expect("dir") {
        let name = f.expect("entry").file_name().to_string_lossy().into_owned();
        assert!(name.ends_with(".npy") && !name.starts_with('.'), "{name}");
    }
}
