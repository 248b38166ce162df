//! Round-trips through synthetic files in each format (AEDAT 2.0/4.0, N-MNIST, .npy, .npz) and
//! the shared reader behaviour: timestamp policy, sensor override, auto-detection.

use snn_runtime::events::{
    EventError, EventReader, Events, Format, ReadOptions, TimestampPolicy, aedat2, aedat4,
    detect_format, evt3, nmnist, npy, npz, read_events,
};

use crate::common::example_data;
use crate::fixtures;

#[test]
fn aedat2_round_trip_counts_imu_words() {
    let ev = fixtures::synthetic(1_000, 240, 180, 100, 3);
    let bytes = fixtures::aedat2(&ev, "eu.seebetter.ini.chips.davis.DAVIS240C", 10);
    let rec = aedat2::from_bytes(&bytes, &ReadOptions::default()).expect("decode");
    assert_eq!(rec.events, ev);
    assert_eq!(rec.report.imu, 100);
}

#[test]
fn aedat4_round_trip_every_compression() {
    let ev = fixtures::synthetic(3_000, 346, 260, 1_589_163_147_368_868, 5);
    for code in [0, 1, 3] {
        for table in [false, true] {
            let bytes = fixtures::aedat4(&ev, 512, code, table);
            let rec = aedat4::from_bytes(&bytes, &ReadOptions::default())
                .unwrap_or_else(|e| panic!("compression {code}, table {table}: {e}"));
            assert_eq!(rec.events, ev, "compression {code}");
            assert_eq!(rec.report.imu, 3 * 3_000usize.div_ceil(512) as u64);
        }
    }
}

#[test]
fn bundled_aedat4_matches_shared_golden() {
    let path = example_data().join("aedat4/aedat_crate_test_data.aedat4");
    let rec = read_events(&path, &ReadOptions::default()).expect("bundled file");
    assert_eq!((rec.events.len(), rec.events.n_on()), (78_830, 41_257));
}

#[test]
fn nmnist_round_trip_and_detection() {
    let ev = fixtures::synthetic(500, 34, 34, 0, 600);
    let bytes =
        nmnist::from_bytes(&fixtures::nmnist(&ev), &ReadOptions::default()).expect("decode");
    assert_eq!(bytes.events, ev);
    assert_eq!(
        detect_format(&[7, 15, 0x80, 2, 0x8e], "a/1.bs2".as_ref()).expect("bs2"),
        Format::NMnist
    );
    assert!(matches!(
        detect_format(&[1, 2, 3], "a/b.dat".as_ref()),
        Err(EventError::UnknownFormat { .. })
    ));
}

#[test]
fn npy_structured_mixed_endianness_and_padding() {
    let ev = fixtures::synthetic(777, 1280, 720, -5, 11);
    let rec = npy::from_bytes(
        &fixtures::npy_structured(&ev),
        &ReadOptions {
            sensor: Some((1280, 720)),
            ..Default::default()
        },
    )
    .expect("decode");
    assert_eq!(rec.events, ev);
}

#[test]
fn npy_without_event_fields_is_a_clear_error() {
    let bytes = fixtures::npy_column("<i8", [1, 2, 3].into_iter());
    let msg = npy::from_bytes(&bytes, &ReadOptions::default())
        .expect_err("plain array")
        .to_string();
    assert!(msg.contains("t, x, y, p"), "{msg}");
}

#[test]
fn npz_columns_and_structured_stored_and_deflated() {
    let ev = fixtures::synthetic(400, 128, 128, 1_000, 7);
    let col = |ty: &str, v: Vec<i64>| fixtures::npy_column(ty, v.into_iter());
    let columns = vec![
        ("t.npy", col("<i8", ev.t.clone())),
        (
            "x.npy",
            col("<u2", ev.x.iter().map(|&v| i64::from(v)).collect()),
        ),
        (
            "y.npy",
            col("<i2", ev.y.iter().map(|&v| i64::from(v)).collect()),
        ),
        (
            "p.npy",
            col("|b1", ev.p.iter().map(|&v| i64::from(v)).collect()),
        ),
    ];
    let structured = vec![
        ("meta.npy", col("<i4", vec![1, 2])),
        ("events.npy", fixtures::npy_structured(&ev)),
    ];
    for deflate in [false, true] {
        for members in [&columns, &structured] {
            let bytes = fixtures::zip(members, deflate);
            assert_eq!(
                detect_format(&bytes, "e.npz".as_ref()).expect("detect"),
                Format::Npz
            );
            let rec = npz::from_bytes(&bytes, &ReadOptions::default()).expect("decode");
            assert_eq!(rec.events.t, ev.t);
            assert_eq!(
                (&rec.events.x, &rec.events.y, &rec.events.p),
                (&ev.x, &ev.y, &ev.p)
            );
        }
    }
    let mut short = columns.clone();
    short[3] = ("p.npy", col("|u1", vec![1; 399]));
    let msg = npz::from_bytes(&fixtures::zip(&short, false), &ReadOptions::default())
        .expect_err("lengths")
        .to_string();
    assert!(msg.contains("differ in length"), "{msg}");
}

#[test]
fn timestamp_policy_error_or_count() {
    let mut ev = fixtures::synthetic(50, 34, 34, 1_000, 10);
    ev.t.swap(10, 11);
    let bytes = fixtures::nmnist(&ev);
    let err = nmnist::from_bytes(&bytes, &ReadOptions::default()).expect_err("backwards");
    assert!(
        matches!(
            err,
            EventError::NonMonotonic {
                offset: 55,
                previous: 1_110,
                t: 1_100,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("TimestampPolicy::Allow"));
    let allow = ReadOptions {
        timestamps: TimestampPolicy::Allow,
        ..Default::default()
    };
    let rec = nmnist::from_bytes(&bytes, &allow).expect("allowed");
    assert_eq!(rec.report.non_monotonic, 1);
    assert_eq!(rec.events.t, ev.t);
}

/// Readers check whole runs of events at once and replay a faulty run event by event, so the
/// error must still be the first offending event's, whichever rule it breaks.
#[test]
fn first_bad_event_names_the_error_in_batched_readers() {
    let base = fixtures::synthetic(60, 34, 34, 1_000, 10);
    let nonmono = |ev: &mut Events, k: usize| ev.t[k] = ev.t[k - 1] - 1;
    // Out of range at 20, backwards at 40: the range error wins.
    let mut ev = base.clone();
    ev.x[20] = 34;
    nonmono(&mut ev, 40);
    let err =
        nmnist::from_bytes(&fixtures::nmnist(&ev), &ReadOptions::default()).expect_err("range");
    assert!(
        matches!(
            err,
            EventError::OutOfRange {
                offset: 100,
                x: 34,
                ..
            }
        ),
        "{err}"
    );
    // Backwards at 10, out of range at 30: the timestamp error wins, unless allowed.
    let mut ev = base.clone();
    nonmono(&mut ev, 10);
    ev.y[30] = 40;
    let bytes = fixtures::nmnist(&ev);
    let err = nmnist::from_bytes(&bytes, &ReadOptions::default()).expect_err("order");
    assert!(
        matches!(err, EventError::NonMonotonic { offset: 50, .. }),
        "{err}"
    );
    let allow = ReadOptions {
        timestamps: TimestampPolicy::Allow,
        ..Default::default()
    };
    let err = nmnist::from_bytes(&bytes, &allow).expect_err("range after allowed order");
    assert!(
        matches!(
            err,
            EventError::OutOfRange {
                offset: 150,
                y: 40,
                ..
            }
        ),
        "{err}"
    );
    // AEDAT 4: events come in packets; the error names the packet of the first bad event.
    let mut ev = fixtures::synthetic(40, 346, 260, 1 << 50, 10);
    nonmono(&mut ev, 25);
    let bytes = fixtures::aedat4(&ev, 8, 1, false);
    let err = aedat4::from_bytes(&bytes, &ReadOptions::default()).expect_err("order");
    let EventError::NonMonotonic { offset, t, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(t, ev.t[25]);
    // Packets hold events 0..8, 8..16, 16..24, 24..32, 32..40: out-of-range events report their
    // packet's offset, the same as the timestamp error in events 24..32.
    let range_at = |k: usize| {
        let mut bad = ev.clone();
        bad.x[k] = 346;
        match aedat4::from_bytes(&fixtures::aedat4(&bad, 8, 1, false), &allow) {
            Err(EventError::OutOfRange { offset, .. }) => offset,
            other => panic!("event {k}: {other:?}"),
        }
    };
    assert!(range_at(23) < offset);
    assert_eq!(range_at(24), offset);
    assert_eq!(range_at(31), offset);
    assert!(range_at(32) > offset);
    let rec = aedat4::from_bytes(&bytes, &allow).expect("allowed");
    assert_eq!(rec.report.non_monotonic, 1);
    assert_eq!(rec.events.t, ev.t);
}

#[test]
fn evt3_round_trip_with_vectors_and_time_wrap() {
    // Start 2 s before the 24-bit time wraps (2^24 µs), with runs of adjacent pixels that the
    // fixture packs into VECT_12 / VECT_8 words.
    let mut ev = snn_runtime::events::Events::new(Some((1280, 720)));
    let t0 = (1i64 << 24) - 2_000_000;
    for k in 0..400i64 {
        let run = 1 + (k % 11) as u16;
        for r in 0..run {
            ev.push((
                t0 + k * 10_007,
                100 + r + (k % 50) as u16 * 20,
                (k * 7 % 720) as u16,
                (k % 2) as u8,
            ));
        }
    }
    let bytes = fixtures::evt3(&ev);
    assert_eq!(
        detect_format(&bytes, "x.raw".as_ref()).expect("detect"),
        Format::Evt3
    );
    let rec = evt3::from_bytes(&bytes, &ReadOptions::default()).expect("decode");
    assert_eq!(rec.events, ev);
    assert!(
        ev.t.last().expect("events") > &(1 << 24),
        "crosses the wrap"
    );
}

/// One `EventReader` over files of every format, big and small, good and bad, in a mixed order:
/// each read equals `read_events` on that file, and no event or report carries over.
#[test]
fn event_reader_reuses_buffers_with_read_events_results() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ev = |n, w, h, t0| fixtures::synthetic(n, w, h, t0, 7);
    let mut backwards = ev(80, 34, 34, 100);
    backwards.t[50] = 0;
    let files = [
        ("a.bs2", fixtures::nmnist(&ev(3_000, 34, 34, 5))),
        (
            "b.aedat4",
            fixtures::aedat4(&ev(5_000, 346, 260, 1 << 40), 700, 1, true),
        ),
        ("c.bs2", fixtures::nmnist(&ev(10, 34, 34, 9))),
        (
            "d.aedat4",
            fixtures::aedat4(&ev(300, 346, 260, 1 << 40), 64, 3, false),
        ),
        (
            "e.aedat",
            fixtures::aedat2(&ev(200, 240, 180, 5), "DAVIS240C", 9),
        ),
        ("f.bs2", fixtures::nmnist(&backwards)),
        ("g.bs2", Vec::new()),
        ("h.bs2", vec![1, 2, 3]),
        (
            "i.aedat4",
            fixtures::aedat4(&ev(40, 346, 260, 1 << 40), 16, 0, false),
        ),
        ("j.npy", fixtures::npy_structured(&ev(90, 640, 480, 5))),
    ];
    for (name, bytes) in &files {
        std::fs::write(tmp.path().join(name), bytes).expect("write");
    }
    let opts = ReadOptions::default();
    let mut reader = EventReader::new(opts);
    for round in 0..2 {
        for (name, _) in files.iter().chain(files.iter().rev()) {
            let path = tmp.path().join(name);
            let want = read_events(&path, &opts);
            match (reader.read(&path), want) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got.events, want.events, "{round} {name}");
                    assert_eq!(got.report, want.report, "{round} {name}");
                }
                (Err(got), Err(want)) => {
                    assert_eq!(got.to_string(), want.to_string(), "{round} {name}")
                }
                (got, want) => panic!("{name}: {:?} vs {want:?}", got.map(|r| r.events.len())),
            }
        }
    }
}

/// APS frame packets are checked without writing out their pixels. Damage inside them must
/// still be found exactly as full decompression finds it: a packet lz4_flex's frame decoder
/// rejects is a `Corrupt` error at that packet with the decoder's message, one it decodes
/// (same header) reads as the clean file does.
#[test]
fn damaged_aps_frame_packets_in_the_bundled_aedat4() {
    use std::io::Read;
    let path = example_data().join("aedat4/aedat_crate_test_data.aedat4");
    let clean = std::fs::read(&path).expect("bundled file");
    let opts = ReadOptions::default();
    let want = aedat4::from_bytes(&clean, &opts).expect("clean");
    // Walk the packets: magic line, IOHeader, then (stream id, size, payload).
    let mut at = clean.iter().position(|&b| b == b'\n').expect("magic line") + 1;
    let header = i32::from_le_bytes(clean[at..at + 4].try_into().expect("4 bytes"));
    at += 4 + header as usize;
    let decode = |payload: &[u8]| {
        let mut out = Vec::new();
        lz4_flex::frame::FrameDecoder::new(payload)
            .read_to_end(&mut out)
            .map(|_| out)
            .map_err(|e| e.to_string())
    };
    let mut frames = Vec::new();
    while at + 8 <= clean.len() {
        let size = i32::from_le_bytes(clean[at + 4..at + 8].try_into().expect("4 bytes"));
        let Ok(size) = usize::try_from(size) else {
            break;
        };
        if at + 8 + size > clean.len() {
            break;
        }
        let payload = &clean[at + 8..at + 8 + size];
        if decode(payload).is_ok_and(|p| &p[8..12] == b"FRME") {
            frames.push((at, size));
        }
        at += 8 + size;
    }
    assert_eq!(frames.len() as u64, want.report.frames);
    let mut rng = crate::common::Rng(0x00F4_A3E5);
    let (mut rejected, mut accepted) = (0, 0);
    for trial in 0..300 {
        let (packet, size) = frames[rng.below(frames.len())];
        let mut bad = clean.clone();
        // Past the frame descriptor: the first block's size, runs of 0xFF (endless length
        // bytes) or single bit flips among tokens, offsets and literals.
        let hit = match trial % 3 {
            0 => packet + 8 + 7 + rng.below(4),
            _ => packet + 8 + 11 + rng.below(size - 50),
        };
        match trial % 3 {
            1 => bad[hit..hit + 32].fill(0xFF),
            _ => bad[hit] ^= 1 << rng.below(8),
        }
        let payload = &bad[packet + 8..packet + 8 + size];
        let got = aedat4::from_bytes(&bad, &opts);
        match decode(payload) {
            Err(e) => {
                rejected += 1;
                let Err(EventError::Corrupt { offset, what, .. }) = &got else {
                    panic!(
                        "trial {trial}: byte {hit}: {e} but read {:?}",
                        got.map(|r| r.report)
                    )
                };
                assert_eq!(*offset, packet as u64, "trial {trial}");
                assert!(what.contains(&e), "trial {trial}: {what} vs {e}");
            }
            // A payload that decodes with the clean header must read as the clean file.
            Ok(p)
                if p.get(..1024)
                    == decode(&clean[packet + 8..packet + 8 + size])
                        .expect("clean")
                        .get(..1024) =>
            {
                accepted += 1;
                let got = got.unwrap_or_else(|e| panic!("trial {trial}: byte {hit}: {e}"));
                assert_eq!((got.events, got.report), (want.events.clone(), want.report));
            }
            Ok(_) => {}
        }
    }
    assert!(rejected > 10 && accepted > 10, "{rejected} {accepted}");
}
