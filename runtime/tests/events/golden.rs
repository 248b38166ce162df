//! Every golden value of shared/data/README.md, reproduced by the readers.

use snn_runtime::events::{
    Event, Events, Format, ReadOptions, aedat2, aedat4, detect_format, evt3, labels, nmnist, npy,
    read_events,
};

use crate::common::shared_data;

fn first5(ev: &Events) -> Vec<Event> {
    (0..5)
        .map(|i| ev.get(i).expect("at least 5 events"))
        .collect()
}

fn is_monotone(ev: &Events) -> bool {
    ev.t.windows(2).all(|w| w[0] <= w[1])
}

#[test]
fn aedat4_tonic_sample() {
    let Some(dir) = shared_data("aedat4_tonic_sample") else {
        return;
    };
    let path = dir.join("aedat4/tonic_sample.aedat4");
    let rec = aedat4::read(&path, &ReadOptions::default()).expect("read");
    let ev = &rec.events;
    assert_eq!(ev.len(), 111_954);
    assert_eq!(ev.n_on(), 55_023);
    assert_eq!(ev.sensor(), Some((320, 240)));
    assert!(is_monotone(ev));
    assert!(ev.x.iter().all(|&x| x <= 319) && ev.y.iter().all(|&y| y <= 239));
    assert_eq!(rec.report.imu, 475);
    assert_eq!(rec.report.triggers, 0);
    assert_eq!(ev.t[0], 1_605_537_493_718_345);
    assert_eq!(ev.duration(), 589_917);
    assert_eq!(
        first5(ev),
        vec![
            (1605537493718345, 154, 204, 0),
            (1605537493718348, 149, 206, 0),
            (1605537493718349, 148, 199, 1),
            (1605537493718354, 139, 30, 0),
            (1605537493718360, 130, 181, 1)
        ]
    );
    assert_eq!(ev.last(), Some((1605537494308262, 88, 237, 1)));
    assert_eq!(
        detect_format(b"#!AER-DAT4.0\r\n", &path).expect("detect"),
        Format::Aedat4
    );
}

#[test]
fn aedat4_aedat_crate_test_data() {
    let Some(dir) = shared_data("aedat4_aedat_crate_test_data") else {
        return;
    };
    let rec = read_events(
        dir.join("aedat4/aedat_crate_test_data.aedat4"),
        &ReadOptions::default(),
    )
    .expect("read");
    let ev = &rec.events;
    assert_eq!(ev.len(), 78_830);
    assert_eq!(ev.n_on(), 41_257);
    assert_eq!(ev.sensor(), Some((346, 260)));
    assert!(is_monotone(ev));
    assert!(ev.x.iter().all(|&x| x <= 345) && ev.y.iter().all(|&y| y <= 259));
    assert_eq!(
        (rec.report.frames, rec.report.imu, rec.report.triggers),
        (59, 2_363, 236)
    );
    assert_eq!(ev.t[0], 1_589_163_147_368_868);
    assert_eq!(ev.duration(), 2_359_945);
    assert_eq!(
        first5(ev),
        vec![
            (1589163147368868, 215, 164, 1),
            (1589163147368950, 226, 160, 1),
            (1589163147368974, 40, 236, 1),
            (1589163147368981, 69, 226, 1),
            (1589163147368988, 213, 165, 1)
        ]
    );
    assert_eq!(ev.last(), Some((1589163149728813, 233, 205, 1)));
}

struct Aedat2Golden {
    file: &'static str,
    bytes: u64,
    records: u64,
    dvs: usize,
    on: usize,
    imu: u64,
    t: (i64, i64),
    duration: i64,
    first: [Event; 5],
}

#[test]
fn aedat2_davis240c_recordings() {
    let Some(dir) = shared_data("aedat2_davis240c_recordings") else {
        return;
    };
    let goldens = [
        Aedat2Golden {
            file: "IMU_rotDisk.aedat",
            bytes: 3_582_911,
            records: 425_984,
            dvs: 374_296,
            on: 163_098,
            imu: 51_688,
            t: (341678, 3508437),
            duration: 3_166_759,
            first: [
                (341678, 11, 15, 1),
                (341678, 54, 169, 0),
                (341685, 235, 164, 1),
                (341698, 47, 179, 0),
                (341720, 239, 162, 1),
            ],
        },
        Aedat2Golden {
            file: "IMU_translBoxes.aedat",
            bytes: 1_748_132,
            records: 196_608,
            dvs: 162_771,
            on: 82_944,
            imu: 33_837,
            t: (294976755, 297049406),
            duration: 2_072_651,
            first: [
                (294976755, 156, 36, 0),
                (294976892, 205, 128, 0),
                (294976940, 169, 46, 1),
                (294976963, 94, 117, 0),
                (294977020, 159, 64, 1),
            ],
        },
    ];
    for g in goldens {
        let path = dir.join("aedat2").join(g.file);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), g.bytes);
        let rec = aedat2::read(&path, &ReadOptions::default()).expect("read");
        let ev = &rec.events;
        assert_eq!(ev.len(), g.dvs, "{}", g.file);
        assert_eq!(ev.n_on(), g.on, "{}", g.file);
        assert_eq!(rec.report.imu, g.imu, "{}", g.file);
        assert_eq!((rec.report.aps, rec.report.special), (0, 0), "{}", g.file);
        assert_eq!(ev.len() as u64 + rec.report.imu, g.records, "{}", g.file);
        assert_eq!((ev.t[0], *ev.t.last().expect("events")), g.t, "{}", g.file);
        assert_eq!(ev.duration(), g.duration, "{}", g.file);
        assert_eq!(first5(ev), g.first.to_vec(), "{}", g.file);
        assert_eq!(ev.sensor(), Some((240, 180)));
        assert_eq!(ev.x.iter().max(), Some(&239));
        assert_eq!(ev.y.iter().max(), Some(&179));
        // rotDisk holds whole 7-word IMU6 samples; translBoxes was cut at a 1024-record boundary
        // mid-sample (33,837 = 7 * 4,833 + 6), which the README's "truncated" remark explains.
        assert_eq!(
            rec.report.imu % 7,
            if g.file == "IMU_rotDisk.aedat" { 0 } else { 6 }
        );
    }
}

#[test]
fn aedat2_data_offset_and_first_record() {
    let Some(dir) = shared_data("aedat2_data_offset_and_first_record") else {
        return;
    };
    for (file, start) in [
        ("IMU_rotDisk.aedat", 175_039usize),
        ("IMU_translBoxes.aedat", 175_268),
    ] {
        let bytes = std::fs::read(dir.join("aedat2").join(file)).expect("read");
        assert_eq!((bytes.len() - start) % 8, 0);
        // Cutting the file right after the header leaves a valid, empty recording.
        let rec =
            aedat2::from_bytes(&bytes[..start], &ReadOptions::default()).expect("header only");
        assert!(rec.events.is_empty());
        if file == "IMU_rotDisk.aedat" {
            assert_eq!(
                &bytes[start..start + 8],
                &[0x03, 0xc0, 0xb8, 0x00, 0, 0x05, 0x36, 0xae]
            );
        }
    }
}

#[test]
fn nmnist_tonic_sample() {
    let Some(dir) = shared_data("nmnist_tonic_sample") else {
        return;
    };
    let rec = read_events(
        dir.join("nmnist/tonic_sample_nmnist.bin"),
        &ReadOptions::default(),
    )
    .expect("read");
    let ev = &rec.events;
    assert_eq!(ev.len(), 4_325);
    assert_eq!(ev.n_on(), 2_145);
    assert_eq!((ev.t[0], *ev.t.last().expect("events")), (654, 311_175));
    assert!(is_monotone(ev));
    assert!(ev.x.iter().chain(&ev.y).all(|&v| v <= 33));
    assert_eq!(
        first5(ev),
        vec![
            (654, 7, 15, 1),
            (2999, 19, 18, 0),
            (3017, 21, 17, 0),
            (3893, 10, 18, 0),
            (4023, 12, 9, 1)
        ]
    );
}

#[test]
fn nmnist_small_every_golden_row() {
    let Some(dir) = shared_data("nmnist_small_every_golden_row") else {
        return;
    };
    let csv =
        std::fs::read_to_string(dir.join("golden/nmnist_small_golden.csv")).expect("golden csv");
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .expect("header")
            .starts_with("file,split,label,n_events,n_on")
    );
    let (mut rows, mut total, mut train, mut t_max) = (0, 0usize, 0usize, 0i64);
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f[i].parse::<i64>().expect("number");
        let rec = nmnist::read(
            dir.join("nmnist/NMNISTsmall").join(f[0]),
            &ReadOptions::default(),
        )
        .expect(f[0]);
        let ev = &rec.events;
        assert_eq!(ev.len() as i64, num(3), "{} n_events", f[0]);
        assert_eq!(ev.n_on() as i64, num(4), "{} n_on", f[0]);
        let ev_tuple = |e: Event| [e.0, i64::from(e.1), i64::from(e.2), i64::from(e.3)];
        assert_eq!(
            ev_tuple(ev.first().expect("first")),
            [num(5), num(6), num(7), num(8)],
            "{} first",
            f[0]
        );
        assert_eq!(
            ev_tuple(ev.last().expect("last")),
            [num(9), num(10), num(11), num(12)],
            "{} last",
            f[0]
        );
        let file_max = *ev.t.iter().max().expect("events");
        assert_eq!(file_max, num(13), "{} t_max", f[0]);
        assert!(is_monotone(ev), "{}", f[0]);
        rows += 1;
        total += ev.len();
        if f[1] == "train" {
            train += ev.len();
        }
        t_max = t_max.max(file_max);
    }
    assert_eq!(rows, 1_100);
    assert_eq!(
        (total, train, total - train),
        (4_518_827, 4_133_231, 385_596)
    );
    assert_eq!(t_max, 336_040);
}

#[test]
fn nmnist_small_readme_examples() {
    let Some(dir) = shared_data("nmnist_small_readme_examples") else {
        return;
    };
    for (file, n, first) in [
        (
            "1.bs2",
            4_681,
            [
                (893, 18, 16, 1),
                (1060, 20, 17, 1),
                (2443, 17, 9, 0),
                (2680, 9, 9, 0),
                (2835, 7, 26, 0),
            ],
        ),
        (
            "1000.bs2",
            3_858,
            [
                (596, 19, 14, 1),
                (1225, 15, 21, 0),
                (4883, 20, 7, 0),
                (5076, 21, 12, 1),
                (6010, 9, 22, 0),
            ],
        ),
        (
            "60001.bs2",
            3_330,
            [
                (5087, 7, 7, 1),
                (6544, 19, 13, 1),
                (7283, 15, 10, 0),
                (7500, 14, 21, 1),
                (7736, 16, 18, 1),
            ],
        ),
    ] {
        let ev = nmnist::read(
            dir.join("nmnist/NMNISTsmall").join(file),
            &ReadOptions::default(),
        )
        .expect(file)
        .events;
        assert_eq!(ev.len(), n, "{file}");
        assert_eq!(first5(&ev), first.to_vec(), "{file}");
    }
}

#[test]
fn prophesee_npy_structured_with_padding() {
    let Some(dir) = shared_data("prophesee_npy_structured_with_padding") else {
        return;
    };
    let path = dir.join("prophesee_evt3/evt3_sample.npy");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 3_513_728);
    let rec = npy::read(
        &path,
        &ReadOptions {
            sensor: Some((1280, 720)),
            ..Default::default()
        },
    )
    .expect("read");
    let ev = &rec.events;
    assert_eq!(ev.len(), 219_596);
    assert_eq!(ev.n_on(), 115_532);
    assert_eq!(
        (ev.t[0], *ev.t.last().expect("events")),
        (11_718_656, 11_772_513)
    );
    assert_eq!(ev.duration(), 53_857);
    assert_eq!(
        first5(ev),
        vec![
            (11718656, 874, 200, 0),
            (11718656, 806, 200, 1),
            (11718656, 882, 201, 0),
            (11718656, 1085, 201, 1),
            (11718656, 1235, 201, 1)
        ]
    );
    assert_eq!(ev.last(), Some((11772513, 1218, 572, 1)));
    // Auto-detection finds the same thing without a declared sensor.
    let auto = read_events(&path, &ReadOptions::default()).expect("auto");
    assert_eq!(auto.events.t, ev.t);
}

#[test]
fn dvs_gesture_labels_csv() {
    let Some(dir) = shared_data("dvs_gesture_labels_csv") else {
        return;
    };
    let l = labels::read_labels(dir.join("dvs_gesture/user01_natural_labels.csv")).expect("labels");
    assert_eq!(l.len(), 12);
    assert_eq!(
        (l[0].class, l[0].start, l[0].end),
        (1, 53_036_986, 59_508_469)
    );
    let last = l.last().expect("rows");
    assert_eq!(
        (last.class, last.start, last.end),
        (11, 171_367_247, 177_991_967)
    );
    assert_eq!(l.iter().filter(|r| r.class == 8).count(), 2);
    let mut classes: Vec<u32> = l.iter().map(|r| r.class).collect();
    classes.dedup();
    classes.sort_unstable();
    classes.dedup();
    assert_eq!(classes, (1..=11).collect::<Vec<_>>());
}

/// The README's EVT 3 values come from expelliarmus 1.1.12, which counts every decrease of the
/// 12-bit TIME_LOW word as a carry into TIME_HIGH. This file holds 11 such decreases (small
/// jitters like 0x32b -> 0x320 and 0xfff -> 0x000 after TIME_HIGH already advanced), so its
/// timestamps drift by 11 x 4096 µs and end at high half 0xb3a, which the sensor never sent
/// (the file's TIME_HIGH words are only 0xb2d, 0xb2e, 0xb2f). Our reader follows the format:
/// t = TIME_HIGH << 12 | TIME_LOW (plus 24-bit wraps of TIME_HIGH). Every other golden value
/// matches exactly, and the timestamps match up to that multiple of 4096.
#[test]
fn prophesee_evt3_raw_matches_its_npy_decode() {
    let Some(dir) = shared_data("prophesee_evt3_raw_matches_its_npy_decode") else {
        return;
    };
    let raw = dir.join("prophesee_evt3/evt3_sample.raw");
    let bytes = std::fs::read(&raw).expect("read");
    assert_eq!(bytes.len(), 618_052);
    // 7 header lines, binary data from byte 166: 308,943 16-bit words.
    assert_eq!(bytes[..166].iter().filter(|&&b| b == b'\n').count(), 7);
    assert_ne!(bytes[166], b'%');
    assert_eq!((bytes.len() - 166) / 2, 308_943);
    assert_eq!(detect_format(&bytes, &raw).expect("detect"), Format::Evt3);
    let rec = evt3::read(&raw, &ReadOptions::default()).expect("decode");
    let ev = &rec.events;
    assert_eq!(ev.sensor(), Some((1280, 720)));
    assert_eq!(ev.len(), 219_596);
    assert_eq!(ev.n_on(), 115_532);
    assert_eq!(
        first5(ev),
        vec![
            (11718656, 874, 200, 0),
            (11718656, 806, 200, 1),
            (11718656, 882, 201, 0),
            (11718656, 1085, 201, 1),
            (11718656, 1235, 201, 1)
        ]
    );
    let npy = npy::read(
        dir.join("prophesee_evt3/evt3_sample.npy"),
        &ReadOptions::default(),
    )
    .expect("npy");
    assert_eq!(
        (&npy.events.x, &npy.events.y, &npy.events.p),
        (&ev.x, &ev.y, &ev.p)
    );
    let carries: Vec<i64> = npy.events.t.iter().zip(&ev.t).map(|(a, b)| a - b).collect();
    assert!(carries.iter().all(|d| d % 4096 == 0 && *d >= 0));
    assert!(carries.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(*carries.last().expect("events"), 11 * 4096);
    // The README's last event (11772513, 1218, 572, 1) and duration 53,857 µs, minus the drift.
    assert_eq!(ev.last(), Some((11_772_513 - 11 * 4096, 1218, 572, 1)));
    assert_eq!(ev.duration(), 53_857 - 11 * 4096);
    assert_eq!(ev.t.last().expect("events") >> 12, 0xb2f);
}
