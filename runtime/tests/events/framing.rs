//! Framing: hand-computed cases for each slicing mode, downsampling, denoising, count
//! conservation on real N-MNIST samples, the paper's DVS128 Gesture shape, `.npy` and PNG output.

use ndarray::{Array3, Array4, s};
use snn_runtime::events::{
    EventError, EventReader, Events, FrameBuffer, FrameSpec, ReadOptions, Slicing, TimestampPolicy,
    denoise, frame, frame_into, load_frames_npy, nmnist, read_events, render_frames_png,
    repeat_static, save_frames_npy,
};

use crate::common::{Rng, example_data};
use crate::fixtures;

/// Six events on a 4 x 4 sensor, hand-placed.
fn six() -> Events {
    let mut ev = Events::new(Some((4, 4)));
    for e in [
        (100, 0, 0, 1),
        (150, 1, 0, 0),
        (250, 3, 3, 1),
        (299, 3, 3, 1),
        (300, 2, 1, 0),
        (420, 0, 3, 1),
    ] {
        ev.push(e);
    }
    ev
}

/// Events per time step.
fn per_step(f: &Array4<f32>) -> Vec<f32> {
    f.outer_iter().map(|step| step.sum()).collect()
}

#[test]
fn time_window_from_first_event() {
    let f = frame(&six(), &FrameSpec::time_window(100, 3)).expect("frame");
    assert_eq!(f.dim(), (3, 2, 4, 4));
    // [100,200): e0 ON at (0,0), e1 OFF at (1,0); [200,300): e2, e3 ON at (3,3); [300,400): e4 OFF at (2,1).
    let mut want = Array4::<f32>::zeros((3, 2, 4, 4));
    want[[0, 1, 0, 0]] = 1.0;
    want[[0, 0, 0, 1]] = 1.0;
    want[[1, 1, 3, 3]] = 2.0;
    want[[2, 0, 1, 2]] = 1.0;
    assert_eq!(f, want);
}

#[test]
fn time_window_with_explicit_start() {
    let spec = FrameSpec {
        slicing: Slicing::TimeWindow {
            window_us: 100,
            steps: 3,
            start: Some(150),
        },
        ..FrameSpec::time_window(1, 1)
    };
    let f = frame(&six(), &spec).expect("frame");
    // e0 precedes the start; [150,250): e1; [250,350): e2, e3, e4; [350,450): e5.
    assert_eq!(per_step(&f), vec![1.0, 3.0, 1.0]);
    assert_eq!(f[[2, 1, 3, 0]], 1.0);
}

#[test]
fn event_count_slices() {
    assert_eq!(
        per_step(&frame(&six(), &FrameSpec::event_count(3)).expect("3")),
        vec![2.0; 3]
    );
    // floor(i * 4 / 6) = 0,0,1,2,2,3.
    let f = frame(&six(), &FrameSpec::event_count(4)).expect("4");
    assert_eq!(per_step(&f), vec![2.0, 1.0, 2.0, 1.0]);
    assert_eq!(f[[1, 1, 3, 3]], 1.0);
    // More steps than events leaves empty steps but loses nothing.
    assert_eq!(
        frame(&six(), &FrameSpec::event_count(10))
            .expect("10")
            .sum(),
        6.0
    );
}

#[test]
fn fixed_frame_count_splits_the_span() {
    // Span 100..420 in 2 halves of 160 µs: [100,260) holds e0-e2, [260,420] e3-e5.
    let f = frame(&six(), &FrameSpec::frame_count(2)).expect("frame");
    assert_eq!(per_step(&f), vec![3.0, 3.0]);
    assert_eq!(f[[1, 1, 3, 0]], 1.0, "t_max lands in the last frame");
    // A zero-length recording puts everything in the first frame.
    let mut one = Events::new(Some((4, 4)));
    one.push((5, 1, 1, 1));
    one.push((5, 2, 2, 0));
    assert_eq!(
        per_step(&frame(&one, &FrameSpec::frame_count(3)).expect("frame")),
        vec![2.0, 0.0, 0.0]
    );
}

#[test]
fn downsampling_divides_coordinates_and_rounds_size_up() {
    let f = frame(&six(), &FrameSpec::event_count(1).downsample(2)).expect("frame");
    assert_eq!(f.dim(), (1, 2, 2, 2));
    // ON: (0,0) -> (0,0); (3,3) x2 -> (1,1); (0,3) -> (0,1) i.e. y=1, x=0. OFF: (1,0) -> (0,0); (2,1) -> (1,0).
    assert_eq!(
        f.slice(s![0, 1, .., ..]),
        ndarray::arr2(&[[1.0, 0.0], [1.0, 2.0]])
    );
    assert_eq!(
        f.slice(s![0, 0, .., ..]),
        ndarray::arr2(&[[1.0, 1.0], [0.0, 0.0]])
    );
    let odd = frame(
        &fixtures::synthetic(50, 5, 7, 0, 1),
        &FrameSpec::event_count(2).downsample(2),
    )
    .expect("odd");
    assert_eq!(odd.dim(), (2, 2, 4, 3));
    assert_eq!(odd.sum(), 50.0);
}

#[test]
fn paper_reference_shape_for_dvs128_gesture() {
    // T = 60 frames of 25 ms, 128 x 128 downsampled by 4 to 2 x 32 x 32.
    let ev = fixtures::synthetic(20_000, 128, 128, 1_000_000, 100);
    let f = frame(&ev, &FrameSpec::time_window(25_000, 60).downsample(4)).expect("frame");
    assert_eq!(f.dim(), (60, 2, 32, 32));
    // 1.5 s of frames cover events 0..15000 exactly (one every 100 µs).
    assert_eq!(f.sum(), 15_000.0);
    assert!(per_step(&f).iter().all(|&n| n == 250.0));
}

#[test]
fn counts_are_conserved_on_real_nmnist_samples() {
    for id in ["1", "500", "60001"] {
        let ev = nmnist::read(
            example_data().join(format!("nmnist/{id}.bs2")),
            &ReadOptions::default(),
        )
        .expect(id)
        .events;
        let n = ev.len() as f32;
        for spec in [
            FrameSpec::event_count(7),
            FrameSpec::frame_count(10),
            FrameSpec::frame_count(10).downsample(3),
        ] {
            let f = frame(&ev, &spec).expect("frame");
            assert_eq!(f.sum(), n, "{id} {spec:?}");
            assert_eq!(
                f.slice(s![.., 1, .., ..]).sum(),
                ev.n_on() as f32,
                "{id}: ON channel"
            );
        }
        let f = frame(&ev, &FrameSpec::time_window(10_000, 20)).expect("frame");
        let t0 = ev.t[0];
        let in_range = ev.t.iter().filter(|&&t| t < t0 + 200_000).count();
        assert_eq!(
            f.sum(),
            in_range as f32,
            "{id}: events inside the 20 windows"
        );
    }
}

#[test]
fn denoise_keeps_events_with_recent_neighbours() {
    let mut ev = Events::new(Some((5, 5)));
    for e in [
        (0, 2, 2, 1),    // no earlier neighbour: dropped
        (10, 3, 2, 1),   // (2,2) fired 10 µs ago: kept
        (500, 0, 4, 0),  // isolated: dropped
        (520, 2, 2, 0),  // (3,2) fired 510 µs ago, beyond 100: dropped
        (530, 1, 3, 1),  // (2,2) fired 10 µs ago (diagonal): kept
        (1000, 4, 0, 1), // isolated: dropped
        (1001, 4, 0, 1), // same pixel does not count as a neighbour: dropped
    ] {
        ev.push(e);
    }
    let kept = denoise(&ev, 100).expect("denoise");
    assert_eq!(kept.t, vec![10, 530]);
    assert_eq!(kept.sensor(), Some((5, 5)));
    let f = frame(&ev, &FrameSpec::event_count(1).denoise(100)).expect("frame");
    assert_eq!(f.sum(), 2.0);
    assert_eq!(f[[0, 1, 2, 3]], 1.0);
}

#[test]
fn static_image_is_repeated() {
    let img = Array3::from_shape_fn((2, 3, 4), |(c, y, x)| (c * 100 + y * 10 + x) as f32);
    let f = repeat_static(img.view(), 5);
    assert_eq!(f.dim(), (5, 2, 3, 4));
    for t in 0..5 {
        assert_eq!(f.slice(s![t, .., .., ..]), img);
    }
}

#[test]
fn spec_errors_are_reported() {
    let mut unsized_ev = six();
    unsized_ev.width = None;
    let cases: [(Events, FrameSpec, &str); 6] = [
        (
            unsized_ev.clone(),
            FrameSpec::event_count(1),
            "sensor size unknown",
        ),
        (six(), FrameSpec::event_count(1).downsample(0), "downsample"),
        (six(), FrameSpec::event_count(0), "time steps"),
        (six(), FrameSpec::time_window(0, 3), "time window"),
        (
            six(),
            FrameSpec::event_count(1).sensor(2, 2),
            "outside the 2x2 sensor",
        ),
        (six(), FrameSpec::event_count(1).denoise(-1), "denoise"),
    ];
    for (ev, spec, needle) in cases {
        let e = frame(&ev, &spec).expect_err(needle);
        assert!(
            matches!(e, EventError::Spec(_)) && e.to_string().contains(needle),
            "{e}"
        );
    }
    // Supplying the size makes the unsized events frameable.
    assert_eq!(
        frame(&unsized_ev, &FrameSpec::event_count(1).sensor(4, 4))
            .expect("sized")
            .sum(),
        6.0
    );
}

#[test]
fn npy_round_trip_and_layout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("frames.npy");
    let f = frame(
        &fixtures::synthetic(999, 34, 34, 0, 3),
        &FrameSpec::event_count(6),
    )
    .expect("frame");
    save_frames_npy(&f, &path).expect("save");
    let bytes = std::fs::read(&path).expect("read");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0, "data starts 64-byte aligned");
    assert!(
        String::from_utf8_lossy(&bytes[10..10 + header_len]).contains("'shape': (6, 2, 34, 34)")
    );
    assert_eq!(bytes.len(), 10 + header_len + 6 * 2 * 34 * 34 * 4);
    assert_eq!(load_frames_npy(&path).expect("load"), f);
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(tmp.path()).expect("dir").count(), 1);
}

#[test]
fn png_grid_colours() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("frames.png");
    let mut f = Array4::<f32>::zeros((5, 2, 4, 4));
    f[[0, 1, 0, 0]] = 3.0; // ON, step 0, top-left
    f[[4, 0, 3, 3]] = 3.0; // OFF, step 4, bottom-right
    render_frames_png(&f, &path).expect("render");
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&path).expect("open"),
    ));
    let mut reader = decoder.read_info().expect("png");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("frame");
    // 5 steps -> 3 x 2 grid of 96 x 96 tiles (4 px scaled by 24) with 2 px gaps.
    assert_eq!((info.width, info.height), (3 * 96 + 4, 2 * 96 + 2));
    let px = |x: usize, y: usize| {
        let i = (y * info.width as usize + x) * 3;
        [buf[i], buf[i + 1], buf[i + 2]]
    };
    assert_eq!(px(0, 0), [255, 0, 0], "ON is red");
    assert_eq!(px(30, 30), [0, 0, 0], "empty is black");
    // Step 4 is row 1, column 1: its bottom-right pixel.
    assert_eq!(px(98 + 95, 98 + 95), [0, 0, 255], "OFF is blue");
    assert_eq!(px(96, 0), [48, 48, 48], "gap");
    let e = render_frames_png(&Array4::zeros((2, 3, 4, 4)), &path).expect_err("3 channels");
    assert!(e.to_string().contains("expected [T >= 1, 2"), "{e}");
}

/// The framing rule written out per event, as the specification: step by the mode's formula,
/// then `+1` at `[step, p != 0, y / f, x / f]`. The fast path (runs of one step, lookup tables,
/// sparse reset) must match it bit for bit.
fn frame_reference(ev: &Events, spec: &FrameSpec) -> Array4<f32> {
    let (w, h) = spec.sensor.or(ev.sensor()).expect("sensor");
    let f = spec.downsample;
    let (steps, bin): (usize, Box<dyn Fn(usize) -> Option<usize>>) = match spec.slicing {
        Slicing::TimeWindow {
            window_us,
            steps,
            start,
        } => {
            let t0 = start.unwrap_or(ev.t[0]);
            let t = ev.t.clone();
            (
                steps,
                Box::new(move |i| {
                    let d = t[i].checked_sub(t0)?;
                    usize::try_from(d / window_us)
                        .ok()
                        .filter(|&b| d >= 0 && b < steps)
                }),
            )
        }
        Slicing::EventCount { steps } => {
            let n = ev.len();
            (steps, Box::new(move |i| Some(i * steps / n)))
        }
        Slicing::FrameCount { steps } => {
            let lo = *ev.t.iter().min().expect("events");
            let hi = *ev.t.iter().max().expect("events");
            let span = i128::from(hi) - i128::from(lo);
            let t = ev.t.clone();
            (
                steps,
                Box::new(move |i| {
                    if span == 0 {
                        return Some(0);
                    }
                    let b = (i128::from(t[i]) - i128::from(lo)) * steps as i128 / span;
                    Some((b as usize).min(steps - 1))
                }),
            )
        }
    };
    let (fw, fh) = (usize::from(w.div_ceil(f)), usize::from(h.div_ceil(f)));
    let mut out = Array4::<f32>::zeros((steps, 2, fh, fw));
    for i in 0..ev.len() {
        if let Some(b) = bin(i) {
            let (x, y) = (usize::from(ev.x[i] / f), usize::from(ev.y[i] / f));
            out[[b, usize::from(ev.p[i] != 0), y, x]] += 1.0;
        }
    }
    out
}

/// Random events on a `w x h` sensor: time-ordered or shuffled, near zero or near the i64 ends.
fn random_events(rng: &mut Rng, n: usize, w: u16, h: u16) -> Events {
    let mut ev = Events::new(Some((w, h)));
    let base = match rng.below(4) {
        0 => 0,
        1 => i64::MAX - 1_000_000,
        2 => i64::MIN + 10,
        _ => 1_700_000_000_000_000,
    };
    let mut t = base;
    let ordered = rng.below(3) != 0;
    for _ in 0..n {
        t = if ordered {
            t.saturating_add(rng.below(300) as i64)
        } else {
            base.saturating_add(rng.below(50_000) as i64)
        };
        ev.push((
            t,
            rng.below(usize::from(w)) as u16,
            rng.below(usize::from(h)) as u16,
            rng.below(2) as u8,
        ));
    }
    ev
}

#[test]
fn fast_framing_matches_the_per_event_rule() {
    let mut rng = Rng(0x5eed_f4a3);
    // One reused buffer across every case, shapes changing and sparse/dense resets mixed, to
    // show no count from one framing leaks into the next.
    let mut buf = FrameBuffer::new();
    for case in 0..400 {
        let (w, h) = (1 + rng.below(40) as u16, 1 + rng.below(40) as u16);
        let n = rng.below(600);
        let ev = random_events(&mut rng, n, w, h);
        let steps = 1 + rng.below(12);
        let start = match rng.below(3) {
            0 => None,
            1 => {
                ev.t.first()
                    .map(|&t| t.saturating_sub(rng.below(2_000) as i64))
            }
            _ => {
                ev.t.first()
                    .map(|&t| t.saturating_add(rng.below(20_000) as i64))
            }
        };
        let slicing = match rng.below(4) {
            0 => Slicing::EventCount { steps },
            1 => Slicing::FrameCount { steps },
            2 => Slicing::TimeWindow {
                window_us: 1 + rng.below(5_000) as i64,
                steps,
                start,
            },
            // Huge windows: step bounds beyond the i64 range.
            _ => Slicing::TimeWindow {
                window_us: i64::MAX / (1 + rng.below(3) as i64),
                steps,
                start,
            },
        };
        let spec = FrameSpec {
            slicing,
            ..FrameSpec::event_count(1).downsample(1 + rng.below(4) as u16)
        };
        if ev.is_empty() {
            continue;
        }
        let want = frame_reference(&ev, &spec);
        assert_eq!(
            frame(&ev, &spec).expect("frame"),
            want,
            "case {case} {spec:?}"
        );
        frame_into(&ev, &spec, &mut buf).expect("frame_into");
        assert_eq!(buf.view(), want, "case {case} reused buffer {spec:?}");
        assert_eq!(buf.dim(), want.dim());
    }
}

#[test]
fn sparse_reset_leaves_no_counts_behind() {
    // Few events on a big tensor take the sparse path; many on a small one the dense path.
    let sparse = FrameSpec::time_window(1_000, 50);
    let a = fixtures::synthetic(200, 346, 260, 0, 97);
    let b = fixtures::synthetic(150, 346, 260, 5, 331);
    let mut buf = FrameBuffer::new();
    for ev in [&a, &b, &a, &b] {
        frame_into(ev, &sparse, &mut buf).expect("sparse");
        assert_eq!(buf.view(), frame(ev, &sparse).expect("fresh"));
    }
    let dense = FrameSpec::event_count(2);
    let c = fixtures::synthetic(5_000, 8, 8, 0, 1);
    for ev in [&c, &a, &c] {
        let spec = if ev.len() == 5_000 { dense } else { sparse };
        frame_into(ev, &spec, &mut buf).expect("mixed");
        assert_eq!(buf.view(), frame(ev, &spec).expect("fresh"));
    }
    assert_eq!(buf.clone().into_array(), frame(&c, &dense).expect("fresh"));
    // A failed framing leaves the buffer as it was.
    let bad = FrameSpec::event_count(0);
    assert!(frame_into(&c, &bad, &mut buf).is_err());
    assert_eq!(buf.as_slice().iter().sum::<f32>(), 5_000.0);
}

/// `EventReader::read_frames` (N-MNIST decoded straight into the frames) against
/// `frame(read_events(..))`: same tensors, event counts, reports and errors, for every slicing,
/// policy and sensor override, good files and bad ones, one reader and buffer throughout.
#[test]
fn read_frames_equals_read_then_frame() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ev = |n, t0, dt| fixtures::synthetic(n, 34, 34, t0, dt);
    let mut backwards = ev(500, 1_000, 3);
    backwards.t.swap(100, 101);
    backwards.t[300] = 2;
    let mut outside = ev(200, 5, 3);
    outside.x[150] = 40;
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("ok.bs2".into(), fixtures::nmnist(&ev(2_000, 500, 7))),
        ("one.bs2".into(), fixtures::nmnist(&ev(1, 9, 1))),
        ("same-t.bs2".into(), fixtures::nmnist(&ev(50, 77, 0))),
        ("empty.bs2".into(), Vec::new()),
        ("backwards.bs2".into(), fixtures::nmnist(&backwards)),
        ("outside.bs2".into(), fixtures::nmnist(&outside)),
        (
            "cut.bs2".into(),
            fixtures::nmnist(&ev(30, 5, 3))[..97].to_vec(),
        ),
        (
            "other.aedat4".into(),
            fixtures::aedat4(
                &fixtures::synthetic(300, 346, 260, 1 << 40, 9),
                64,
                1,
                false,
            ),
        ),
    ];
    for id in ["1", "60001"] {
        let bytes = std::fs::read(example_data().join(format!("nmnist/{id}.bs2"))).expect("read");
        files.push((format!("{id}.bs2"), bytes));
    }
    for (name, bytes) in &files {
        std::fs::write(tmp.path().join(name), bytes).expect("write");
    }
    let window = |w, steps, start| FrameSpec {
        slicing: Slicing::TimeWindow {
            window_us: w,
            steps,
            start,
        },
        ..FrameSpec::event_count(1)
    };
    let specs = [
        FrameSpec::event_count(8),
        FrameSpec::event_count(3).downsample(4),
        FrameSpec::frame_count(8),
        FrameSpec::frame_count(5).downsample(3),
        FrameSpec::time_window(1_000, 10),
        window(300, 40, Some(200)),
        window(50_000, 3, Some(i64::MIN)),
        FrameSpec::event_count(4).denoise(500),
        FrameSpec::event_count(4).sensor(40, 50),
        // Invalid: the general path's error (after any read error) must come out.
        FrameSpec::event_count(4).sensor(20, 20),
        FrameSpec::event_count(0),
        FrameSpec::time_window(0, 3),
        FrameSpec::frame_count(2).downsample(0),
    ];
    let policies = [
        ReadOptions::default(),
        ReadOptions {
            timestamps: TimestampPolicy::Allow,
            ..Default::default()
        },
        ReadOptions {
            sensor: Some((64, 48)),
            ..Default::default()
        },
        ReadOptions {
            sensor: Some((30, 30)),
            timestamps: TimestampPolicy::Allow,
        },
    ];
    let mut out = FrameBuffer::new();
    for opts in policies {
        let mut reader = EventReader::new(opts);
        for spec in &specs {
            for (name, _) in &files {
                let path = tmp.path().join(name);
                let want = read_events(&path, &opts).and_then(|rec| {
                    let frames = frame(&rec.events, spec)?;
                    Ok((rec.events.len(), rec.report, frames))
                });
                let got = reader.read_frames(&path, spec, &mut out);
                let what = format!("{name} {spec:?} {opts:?}");
                match (got, want) {
                    (Ok(got), Ok((n, report, frames))) => {
                        assert_eq!(got.events, n, "{what}");
                        assert_eq!(got.report, report, "{what}");
                        assert_eq!(out.view(), frames, "{what}");
                    }
                    (Err(got), Err(want)) => {
                        assert_eq!(got.to_string(), want.to_string(), "{what}")
                    }
                    (got, want) => panic!("{what}: {got:?} vs {:?}", want.map(|w| w.0)),
                }
            }
        }
    }
}

/// The AEDAT 4 framing sink (time windows framed as packets decode) against
/// `frame(read_events(..))`: tensors, counts, reports and errors, including packets with
/// events out of order or out of range, truncated files and sensor overrides.
#[test]
fn read_frames_equals_read_then_frame_for_aedat4() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ev = |n, t0, dt| fixtures::synthetic(n, 346, 260, t0, dt);
    let mut backwards = ev(900, 1 << 40, 31);
    backwards.t.swap(300, 301);
    backwards.t[700] = 5;
    let mut outside = ev(600, 1 << 40, 31);
    outside.y[450] = 260;
    let whole = fixtures::aedat4(&ev(500, 1 << 40, 20), 64, 1, true);
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "lz4.aedat4".into(),
            fixtures::aedat4(&ev(3_000, 1 << 40, 17), 256, 1, true),
        ),
        (
            "zstd.aedat4".into(),
            fixtures::aedat4(&ev(700, 77, 50), 100, 3, false),
        ),
        (
            "raw.aedat4".into(),
            fixtures::aedat4(&ev(40, 1_000, 0), 7, 0, false),
        ),
        (
            "none.aedat4".into(),
            fixtures::aedat4(&ev(0, 0, 1), 8, 1, false),
        ),
        (
            "backwards.aedat4".into(),
            fixtures::aedat4(&backwards, 128, 1, false),
        ),
        (
            "outside.aedat4".into(),
            fixtures::aedat4(&outside, 128, 1, false),
        ),
        ("cut.aedat4".into(), whole[..whole.len() * 2 / 3].to_vec()),
    ];
    files.push((
        "bundled.aedat4".into(),
        std::fs::read(example_data().join("aedat4/aedat_crate_test_data.aedat4")).expect("read"),
    ));
    for (name, bytes) in &files {
        std::fs::write(tmp.path().join(name), bytes).expect("write");
    }
    let window = |w, steps, start| FrameSpec {
        slicing: Slicing::TimeWindow {
            window_us: w,
            steps,
            start,
        },
        ..FrameSpec::event_count(1)
    };
    let specs = [
        FrameSpec::time_window(10_000, 237),
        FrameSpec::time_window(1_000, 40).downsample(4),
        window(2_000, 30, Some((1 << 40) + 5_000)),
        window(500, 20, Some(-3)),
        window(i64::MAX, 2, Some(i64::MIN + 1)),
        FrameSpec::time_window(1_000, 5).sensor(400, 300),
        // The general path's ground: a smaller spec sensor, denoising, invalid specs, other slicings.
        FrameSpec::time_window(1_000, 5).sensor(100, 100),
        FrameSpec::time_window(1_000, 5).denoise(1_000),
        FrameSpec::time_window(0, 5),
        FrameSpec::time_window(1_000, 0),
        FrameSpec::frame_count(6),
        FrameSpec::event_count(6),
    ];
    let policies = [
        ReadOptions::default(),
        ReadOptions {
            timestamps: TimestampPolicy::Allow,
            ..Default::default()
        },
        ReadOptions {
            sensor: Some((640, 480)),
            timestamps: TimestampPolicy::Allow,
        },
        ReadOptions {
            sensor: Some((300, 200)),
            ..Default::default()
        },
    ];
    let mut out = FrameBuffer::new();
    for opts in policies {
        let mut reader = EventReader::new(opts);
        for spec in &specs {
            for (name, _) in &files {
                let path = tmp.path().join(name);
                let want = read_events(&path, &opts).and_then(|rec| {
                    let frames = frame(&rec.events, spec)?;
                    Ok((rec.events.len(), rec.report, frames))
                });
                let got = reader.read_frames(&path, spec, &mut out);
                let what = format!("{name} {spec:?} {opts:?}");
                match (got, want) {
                    (Ok(got), Ok((n, report, frames))) => {
                        assert_eq!(got.events, n, "{what}");
                        assert_eq!(got.report, report, "{what}");
                        assert!(out.view() == frames, "{what}");
                    }
                    (Err(got), Err(want)) => {
                        assert_eq!(got.to_string(), want.to_string(), "{what}")
                    }
                    (got, want) => panic!("{what}: {got:?} vs {:?}", want.map(|w| w.0)),
                }
            }
        }
    }
}
