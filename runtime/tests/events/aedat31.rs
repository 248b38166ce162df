//! AEDAT 3.1 (DVS128 Gesture layout): fixture round-trips, timestamp overflow, skipped packet
//! types, and the real `user01_natural` labels CSV against a synthetic recording spanning it.

use snn_runtime::events::{
    EventError, Events, Format, ReadOptions, aedat31, detect_format, labels, read_events,
};

use crate::common::shared_data;
use crate::fixtures::{self, AEDAT31_HEADER, aedat31_packet_header, polarity_word};

#[test]
fn round_trip_with_overflow_and_other_packets() {
    // Start just below 2^31 µs so the overflow counter steps from 0 to 1 mid-recording.
    let ev = fixtures::synthetic(5_000, 128, 128, (1 << 31) - 2_500, 1);
    let bytes = fixtures::aedat31(&ev, 700);
    assert_eq!(
        detect_format(&bytes, "x.aedat".as_ref()).expect("detect"),
        Format::Aedat31
    );
    let rec = aedat31::from_bytes(&bytes, &ReadOptions::default()).expect("decode");
    assert_eq!(rec.events, ev);
    assert_eq!(rec.events.sensor(), Some((128, 128)));
    // The overflow step at event 2,500 closes a packet early: 2 x ceil(2500 / 700) packets.
    let packets = 2 * 2_500usize.div_ceil(700);
    assert_eq!(rec.report.special, packets as u64);
    assert_eq!(rec.report.imu, 2 * packets as u64);
    assert!(rec.events.t.iter().any(|&t| t >= 1 << 31));
}

#[test]
fn invalid_events_and_spare_capacity_are_skipped() {
    let mut bytes = AEDAT31_HEADER.as_bytes().to_vec();
    // capacity 4, number 3 (one is marked invalid), one unused slot of garbage.
    bytes.extend(aedat31_packet_header(1, 8, 4, 0, 4, 3, 2));
    for (x, y, p, valid, t) in [
        (1u16, 2u16, 1u8, true, 10u32),
        (3, 4, 0, false, 11),
        (127, 127, 0, true, 12),
    ] {
        bytes.extend_from_slice(&polarity_word(x, y, p, valid).to_le_bytes());
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    bytes.extend_from_slice(&[0xFF; 8]);
    let rec = aedat31::from_bytes(&bytes, &ReadOptions::default()).expect("decode");
    assert_eq!(rec.events.len(), 2);
    assert_eq!(rec.events.get(0), Some((10, 1, 2, 1)));
    assert_eq!(rec.events.get(1), Some((12, 127, 127, 0)));
    assert_eq!(rec.report.invalid, 1);
}

#[test]
fn coordinates_beyond_dvs128_are_rejected_with_offset() {
    let mut bytes = AEDAT31_HEADER.as_bytes().to_vec();
    bytes.extend(aedat31_packet_header(1, 8, 4, 0, 1, 1, 1));
    bytes.extend_from_slice(&polarity_word(128, 5, 1, true).to_le_bytes());
    bytes.extend_from_slice(&7u32.to_le_bytes());
    let err = aedat31::from_bytes(&bytes, &ReadOptions::default()).expect_err("x = 128 on DVS128");
    let offset = (AEDAT31_HEADER.len() + 28) as u64;
    assert!(
        matches!(err, EventError::OutOfRange { offset: o, x: 128, .. } if o == offset),
        "{err}"
    );
    // Declaring a bigger sensor accepts it.
    let big = ReadOptions {
        sensor: Some((256, 256)),
        ..Default::default()
    };
    assert_eq!(
        aedat31::from_bytes(&bytes, &big)
            .expect("bigger sensor")
            .events
            .len(),
        1
    );
}

/// A synthetic DVS128 recording covering every range of the real labels file, written as
/// AEDAT 3.1 to disk, read back by path and split into the 12 labelled samples.
#[test]
fn real_labels_csv_splits_synthetic_recording() {
    let Some(dir) = shared_data("real_labels_csv_splits_synthetic_recording") else {
        return;
    };
    let csv = dir.join("dvs_gesture/user01_natural_labels.csv");
    let labels = labels::read_labels(&csv).expect("labels");
    // One event every 997 µs from 50 s to 180 s: past the last label end (177,991,967).
    let ev = fixtures::synthetic(130_000, 128, 128, 50_000_000, 997);
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("user01_natural.aedat");
    std::fs::write(&path, fixtures::aedat31(&ev, 4096)).expect("write");
    let rec = read_events(&path, &ReadOptions::default()).expect("read");
    assert_eq!(rec.events, ev);
    let samples = labels::split_by_labels(&rec.events, &labels, &csv).expect("split");
    assert_eq!(samples.len(), 12);
    for (s, l) in samples.iter().zip(&labels) {
        let expected = ev.t.iter().filter(|&&t| t >= l.start && t < l.end).count();
        assert_eq!(s.events.len(), expected, "class {}", l.class);
        assert!(s.events.t.iter().all(|&t| t >= l.start && t < l.end));
        assert_eq!((s.class, s.start, s.end), (l.class, l.start, l.end));
        // ~6.5 s per gesture at one event per ms.
        assert!(expected > 5_000, "class {} has {expected}", l.class);
    }
    // A recording that stops before the last label: that label is an error naming the CSV line.
    let short = ev.time_range(0, 175_000_000);
    let err = labels::split_by_labels(&short, &labels, &csv).expect_err("label past end");
    assert!(
        matches!(err, EventError::LabelPastEnd { line: 13, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("user01_natural_labels.csv:13"), "{msg}");
}

#[test]
fn empty_recording_and_header_only_file() {
    let rec = aedat31::from_bytes(AEDAT31_HEADER.as_bytes(), &ReadOptions::default())
        .expect("header only");
    assert!(rec.events.is_empty());
    let err = labels::split_by_labels(
        &Events::default(),
        &labels::from_bytes(b"class,startTime_usec,endTime_usec\n1,0,10\n").expect("csv"),
        "l.csv",
    )
    .expect_err("no events");
    assert!(matches!(err, EventError::LabelPastEnd { line: 2, .. }));
}
