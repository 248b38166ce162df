//! The DVS128 Gesture pipeline without the real dataset (it is not redistributable here): a
//! fixture written in the dataset's own layout — AEDAT 3.1 recordings, `*_labels.csv` and the
//! `trials_to_{train,test}.txt` lists — drives a few training steps of the paper's gesture
//! network through `snnc train`, exactly as a user would with `--data DvsGesture/`.

use snnc_e2e::snnc;
use std::io::Write;
use std::path::Path;

/// Writes an AEDAT 3.1 file: text header, then one polarity packet (type 1, 8-byte events).
fn write_aedat31(path: &Path, events: &[(u32, u16, u16, u8)]) {
    let mut f = std::fs::File::create(path).expect("create fixture");
    f.write_all(b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n")
        .expect("header");
    let n = events.len() as u32;
    let header: [u32; 7] = [8, 4, 0, n, n, n, 0];
    // eventType = 1 (polarity), eventSource = 1, then size, TS offset, overflow, capacity, number, valid.
    f.write_all(&1u16.to_le_bytes()).expect("type");
    f.write_all(&1u16.to_le_bytes()).expect("source");
    for (i, v) in header.iter().take(6).enumerate() {
        let v = if i == 5 { n } else { *v };
        f.write_all(&v.to_le_bytes()).expect("packet header");
    }
    for (t, x, y, p) in events {
        let data: u32 = (u32::from(*x) << 17) | (u32::from(*y) << 2) | (u32::from(*p) << 1) | 1;
        f.write_all(&data.to_le_bytes()).expect("event");
        f.write_all(&t.to_le_bytes()).expect("timestamp");
    }
}

/// A recording with a moving blob per labelled gesture, and its labels CSV.
fn write_trial(dir: &Path, stem: &str, gestures: &[(u32, u32, u32)]) {
    let mut events = Vec::new();
    for (class, start, end) in gestures {
        let mut t = *start;
        let mut k = 0u32;
        while t < *end {
            let x = ((k * 7 + class * 11) % 128) as u16;
            let y = ((k * 3 + class * 5) % 128) as u16;
            events.push((t, x, y, (k % 2) as u8));
            t += 400;
            k += 1;
        }
    }
    write_aedat31(&dir.join(format!("{stem}.aedat")), &events);
    let mut csv = String::from("class,startTime_usec,endTime_usec\n");
    for (class, start, end) in gestures {
        csv.push_str(&format!("{class},{start},{end}\n"));
    }
    std::fs::write(dir.join(format!("{stem}_labels.csv")), csv).expect("labels");
}

#[test]
fn gesture_network_trains_a_few_steps_on_a_dataset_fixture() {
    let dir = std::env::temp_dir().join(format!("snnc-gesture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("fixture dir");
    write_trial(
        &dir,
        "user01_fluorescent",
        &[
            (1, 1_000_000, 1_300_000),
            (2, 1_400_000, 1_700_000),
            (3, 1_800_000, 2_100_000),
        ],
    );
    write_trial(
        &dir,
        "user02_led",
        &[(4, 500_000, 800_000), (5, 900_000, 1_200_000)],
    );
    std::fs::write(
        dir.join("trials_to_train.txt"),
        "user01_fluorescent.aedat\n",
    )
    .expect("train list");
    std::fs::write(dir.join("trials_to_test.txt"), "user02_led.aedat\n").expect("test list");
    let run = dir.join("run");
    let out = snnc(&[
        "train",
        "examples/gesture.snn:GestureVanilla",
        "--data",
        dir.to_str().unwrap_or_default(),
        "--set",
        "T=4",
        "--epochs",
        "1",
        "--batch",
        "2",
        "--workers",
        "1",
        "--run-dir",
        run.to_str().unwrap_or_default(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("epoch   1/1"), "{err}");
    assert!(run.join("checkpoint/params.safetensors").exists());
    let log = std::fs::read_to_string(run.join("log.jsonl")).expect("log");
    assert!(
        log.contains("\"split\":\"train\"") && log.contains("\"split\":\"test\""),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
