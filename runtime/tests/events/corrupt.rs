//! Malformed input: truncation at many offsets, flipped header bytes, wrong magic and versions,
//! bad CSV lines, and a seeded random/mutation sweep. Every case must be a clean `Err` naming
//! the file and an offset (or line) — never a panic.

use std::path::Path;

use snn_runtime::events::{
    EventError, ReadOptions, Recording, aedat2, aedat4, aedat31, evt3, labels, nmnist, npy, npz,
    read_events,
};

use crate::common::Rng;
use crate::fixtures;

type Reader = fn(&Path, &ReadOptions) -> Result<Recording, EventError>;
type Decoder = fn(&[u8], &ReadOptions) -> Result<Recording, EventError>;
/// A fixture: file name, valid bytes, path reader and byte decoder of its format.
type Case = (&'static str, Vec<u8>, Reader, Decoder);

fn readers() -> Vec<Case> {
    let ev = |w, h, t0| fixtures::synthetic(300, w, h, t0, 13);
    vec![
        (
            "rec.aedat",
            fixtures::aedat2(
                &ev(240, 180, 5),
                "eu.seebetter.ini.chips.davis.DAVIS240C",
                7,
            ),
            |p, o| aedat2::read(p, o),
            aedat2::from_bytes,
        ),
        (
            "rec31.aedat",
            fixtures::aedat31(&ev(128, 128, 5), 64),
            |p, o| aedat31::read(p, o),
            aedat31::from_bytes,
        ),
        (
            "rec.aedat4",
            fixtures::aedat4(&ev(346, 260, 1 << 50), 64, 1, true),
            |p, o| aedat4::read(p, o),
            aedat4::from_bytes,
        ),
        (
            "rec.raw",
            fixtures::evt3(&ev(1280, 720, 5)),
            |p, o| evt3::read(p, o),
            evt3::from_bytes,
        ),
        (
            "rec.bs2",
            fixtures::nmnist(&ev(34, 34, 5)),
            |p, o| nmnist::read(p, o),
            nmnist::from_bytes,
        ),
        (
            "rec.npy",
            fixtures::npy_structured(&ev(640, 480, 5)),
            |p, o| npy::read(p, o),
            npy::from_bytes,
        ),
        (
            "rec.npz",
            fixtures::zip(
                &[("events.npy", fixtures::npy_structured(&ev(640, 480, 5)))],
                true,
            ),
            |p, o| npz::read(p, o),
            npz::from_bytes,
        ),
    ]
}

fn offset_of(e: &EventError) -> Option<u64> {
    match e {
        EventError::Truncated { offset, .. }
        | EventError::Corrupt { offset, .. }
        | EventError::UnsupportedVersion { offset, .. }
        | EventError::OutOfRange { offset, .. }
        | EventError::NonMonotonic { offset, .. } => Some(*offset),
        _ => None,
    }
}

#[test]
fn truncation_at_many_offsets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, bytes, read, _) in readers() {
        let path = tmp.path().join(name);
        let full = read(
            &{
                std::fs::write(&path, &bytes).expect("write");
                path.clone()
            },
            &ReadOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{name} fixture must read: {e}"));
        assert_eq!(full.events.len(), 300, "{name}");
        // Every cut in the first 400 bytes (headers), then a stride through the data.
        let cuts: Vec<usize> = (0..bytes.len().min(400))
            .chain((400..bytes.len()).step_by(37))
            .collect();
        let mut errors = 0;
        for cut in cuts {
            std::fs::write(&path, &bytes[..cut]).expect("write");
            for result in [
                read(&path, &ReadOptions::default()),
                read_events(&path, &ReadOptions::default()),
            ] {
                let Err(e) = result else { continue };
                errors += 1;
                let msg = e.to_string();
                assert!(
                    msg.contains(&path.display().to_string()),
                    "{name} cut {cut}: {msg}"
                );
                if let Some(offset) = offset_of(&e) {
                    assert!(
                        offset <= cut as u64,
                        "{name} cut {cut}: offset past the cut: {msg}"
                    );
                }
                if let EventError::Truncated {
                    offset,
                    needed,
                    available,
                    ..
                } = &e
                {
                    assert!(
                        *offset <= cut as u64 && available < needed,
                        "{name} cut {cut}: {msg}"
                    );
                    assert!(msg.contains("byte offset"), "{msg}");
                }
            }
        }
        assert!(
            errors > 100,
            "{name}: only {errors} truncations were rejected"
        );
    }
}

#[test]
fn truncated_records_report_the_record_offset() {
    let ev = fixtures::synthetic(10, 34, 34, 0, 1);
    let bytes = fixtures::nmnist(&ev);
    let err = nmnist::from_bytes(&bytes[..23], &ReadOptions::default()).expect_err("cut");
    assert!(
        matches!(
            err,
            EventError::Truncated {
                offset: 20,
                needed: 5,
                available: 3,
                ..
            }
        ),
        "{err}"
    );

    let a2 = fixtures::aedat2(&ev, "DAVIS240C", 0);
    let err = aedat2::from_bytes(&a2[..a2.len() - 3], &ReadOptions::default()).expect_err("cut");
    assert!(
        matches!(err, EventError::Truncated { offset, .. } if offset == (a2.len() - 8) as u64),
        "{err}"
    );
}

#[test]
fn flipped_header_bytes_never_panic() {
    for (name, bytes, _, from_bytes) in readers() {
        let mut rejected = 0;
        for i in 0..bytes.len().min(600) {
            let mut b = bytes.clone();
            b[i] ^= 0xFF;
            if let Err(e) = from_bytes(&b, &ReadOptions::default()) {
                rejected += 1;
                assert!(e.to_string().contains("<memory>"), "{name} byte {i}: {e}");
            }
        }
        assert!(rejected > 0, "{name}: no flip was noticed");
    }
}

#[test]
fn wrong_magic_and_versions() {
    let opts = ReadOptions::default();
    let v = |r: Result<Recording, EventError>| match r {
        Err(EventError::UnsupportedVersion { found, .. }) => found,
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    };
    assert_eq!(v(aedat2::from_bytes(b"#!AER-DAT3.1\r\n", &opts)), "3.1");
    assert_eq!(v(aedat31::from_bytes(b"#!AER-DAT2.0\r\n", &opts)), "2.0");
    assert_eq!(
        v(aedat4::from_bytes(b"#!AER-DAT5.0\r\n\0\0\0\0", &opts)),
        "5.0"
    );
    assert_eq!(v(npy::from_bytes(b"\x93NUMPY\x09\x00\x10\x00", &opts)), "9");
    for (bytes, reader) in [
        (
            &b"#!AER-DAX2.0\r\n"[..],
            aedat2::from_bytes as fn(&[u8], &ReadOptions) -> _,
        ),
        (b"garbage\r\n", aedat31::from_bytes),
        (b"PK\x03\x04 nope", npz::from_bytes),
        (b"\x93NUMPX\x01\x00", npy::from_bytes),
    ] {
        let e = reader(bytes, &opts).expect_err("bad magic");
        assert!(
            matches!(e, EventError::Corrupt { .. } | EventError::Truncated { .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("byte offset"), "{e}");
    }
    // AEDAT 4: a header whose FlatBuffer identifier is not IOHE.
    let mut a4 = fixtures::aedat4(&fixtures::synthetic(5, 8, 8, 0, 1), 4, 1, false);
    a4[18 + 4] = b'X';
    let e = aedat4::from_bytes(&a4, &opts).expect_err("identifier");
    assert!(e.to_string().contains("IOHE"), "{e}");
    // A stream id the header does not declare.
    let mut a4 = fixtures::aedat4(&fixtures::synthetic(5, 8, 8, 0, 1), 4, 1, false);
    let first_packet = 18 + i32::from_le_bytes([a4[14], a4[15], a4[16], a4[17]]) as usize;
    a4[first_packet] = 7;
    let e = aedat4::from_bytes(&a4, &opts).expect_err("stream id");
    assert!(
        matches!(e, EventError::Corrupt { offset, .. } if offset == first_packet as u64),
        "{e}"
    );
    // Declared sensor too small: the out-of-range event is reported, not clamped.
    let ev = fixtures::synthetic(20, 346, 260, 0, 1);
    let e = aedat4::from_bytes(
        &fixtures::aedat4(&ev, 8, 0, false),
        &ReadOptions {
            sensor: Some((8, 8)),
            ..opts
        },
    )
    .expect_err("range");
    assert!(
        matches!(
            e,
            EventError::OutOfRange {
                width: 8,
                height: 8,
                ..
            }
        ),
        "{e}"
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("mystery.dat");
    std::fs::write(&p, b"hello").expect("write");
    let e = read_events(&p, &opts).expect_err("unknown");
    assert!(
        matches!(e, EventError::UnknownFormat { .. }) && e.to_string().contains("mystery.dat"),
        "{e}"
    );
    let e = read_events(tmp.path().join("absent.aedat4"), &opts).expect_err("missing");
    assert!(
        matches!(e, EventError::Io { .. }) && e.to_string().contains("absent.aedat4"),
        "{e}"
    );
}

#[test]
fn bad_csv_lines_name_the_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("user02_led_labels.csv");
    let header = "class,startTime_usec,endTime_usec\n";
    for (body, line, needle) in [
        ("klass,start,end\n1,2,3\n", 1, "header"),
        ("", 1, "empty"),
        ("\u{0}\u{ff}", 1, "header"),
        ("1,10,20\n2,30\n", 3, "2 fields"),
        ("1,10,20\n\n2,abc,40\n", 4, "not an integer"),
        ("1,50,40\n", 2, "not before"),
        ("-1,5,40\n", 2, "negative"),
        ("1,5,40,7\n", 2, "4 fields"),
    ] {
        let text = if line == 1 {
            body.to_string()
        } else {
            format!("{header}{body}")
        };
        std::fs::write(&path, text).expect("write");
        let e = labels::read_labels(&path).expect_err(body);
        assert!(
            matches!(&e, EventError::BadLine { line: l, .. } if *l == line),
            "{body:?}: {e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("user02_led_labels.csv:{line}")) && msg.contains(needle),
            "{msg}"
        );
    }
    // Invalid UTF-8 on line 3.
    std::fs::write(&path, [header.as_bytes(), b"1,2,3\n\xff,1,2\n"].concat()).expect("write");
    assert!(matches!(
        labels::read_labels(&path),
        Err(EventError::BadLine { line: 3, .. })
    ));
    // CRLF and trailing blank lines are fine.
    std::fs::write(&path, "class,startTime_usec,endTime_usec\r\n3,1,2\r\n\r\n").expect("write");
    assert_eq!(labels::read_labels(&path).expect("crlf").len(), 1);
}

/// 2,000 seeded inputs per reader: mutations of a valid file (byte flips, cuts, splices,
/// duplicated ranges) and pure noise behind the right magic. Only panics fail.
#[test]
fn random_and_mutated_inputs_never_panic() {
    let mut rng = Rng(0x5EED_CAFE_F00D_1234);
    let mut cases: Vec<(&str, Vec<u8>, Decoder)> = readers()
        .into_iter()
        .map(|(n, b, _, f)| (n, b, f))
        .collect();
    cases.push((
        "labels",
        b"class,startTime_usec,endTime_usec\n1,10,20\n2,30,40\n".to_vec(),
        |b, _| labels::from_bytes(b).map(|_| Recording::default()),
    ));
    let allow = ReadOptions {
        timestamps: snn_runtime::events::TimestampPolicy::Allow,
        ..Default::default()
    };
    for (name, base, decode) in cases {
        let mut ok = 0;
        for i in 0..2_000 {
            let mut b = base.clone();
            match i % 5 {
                0 => (0..1 + rng.below(8)).for_each(|_| {
                    let k = rng.below(b.len());
                    b[k] = rng.next() as u8;
                }),
                1 => b.truncate(rng.below(b.len())),
                2 => {
                    let k = rng.below(b.len());
                    let noise: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
                    b.splice(k..k, noise);
                }
                3 => {
                    let (a, len) = (rng.below(b.len()), rng.below(256));
                    let chunk = b[a..(a + len).min(b.len())].to_vec();
                    let at = rng.below(b.len());
                    b.splice(at..at, chunk);
                }
                _ => {
                    let keep = rng.below(b.len().min(64));
                    b.truncate(keep);
                    b.extend((0..rng.below(512)).map(|_| rng.next() as u8));
                }
            }
            let opts = if i % 2 == 0 {
                ReadOptions::default()
            } else {
                allow
            };
            match decode(&b, &opts) {
                Ok(_) => ok += 1,
                Err(e) => assert!(e.to_string().contains("<memory>"), "{name}: {e}"),
            }
        }
        println!("{name}: {ok} of 2000 mutated inputs still decoded");
    }
}
