"""Read + frame throughput of tonic and SpikingJelly on the files bench_events.rs uses.

Prints one JSON line per case (same fields as the Rust side): median of RUNS timed passes after
one warm-up pass that also sums the frames, as a check that every tool framed the same events.

    python peers.py tonic [RUNS]          # needs tonic, numpy, aedat
    python peers.py spikingjelly [RUNS]   # needs spikingjelly (torch) and aedat for AEDAT 4
"""

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"
AEDAT4 = DATA / "aedat4" / "aedat_crate_test_data.aedat4"
WINDOW_US = 10_000
T = 8


def nmnist_files():
    files = []
    for name in ("train1K.txt", "test100.txt"):
        for line in (DATA / "nmnist" / name).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                files.append(DATA / "nmnist" / f"{line.split()[0]}.bs2")
    return files


def report(case, tool, runs, one_pass):
    events, framed = one_pass(True)
    secs = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        one_pass(False)
        secs.append(time.perf_counter() - start)
    median = statistics.median(secs)
    print(json.dumps({"case": case, "tool": tool, "events": int(events), "framed": float(framed),
                      "median_s": round(median, 6), "events_per_s": round(events / median, 1),
                      "runs": len(secs)}), flush=True)


def passes(files, read, to_frames):
    def one_pass(check):
        events = framed = 0
        for f in files:
            ev = read(f)
            frames = to_frames(ev)
            events += len(ev["t"]) if isinstance(ev, dict) else len(ev)
            if check:
                framed += float(frames.sum())
        return events, framed
    return one_pass


def run_tonic(runs):
    import tonic
    from tonic.io import read_aedat4, read_mnist_file
    from tonic.transforms import ToFrame

    dtype = tonic.datasets.NMNIST.dtype
    read = lambda f: read_mnist_file(str(f), dtype=dtype)
    files = nmnist_files()
    for case, frame in (("nmnist-count-T8", ToFrame(sensor_size=(34, 34, 2), n_event_bins=T)),
                        ("nmnist-time-T8", ToFrame(sensor_size=(34, 34, 2), n_time_bins=T))):
        report(case, f"tonic-{tonic.__version__}", runs, passes(files, read, frame))
    def read4(f):
        # read_aedat4 names polarity `on` (titled `p`); ToFrame looks for a field named `p`.
        # A view with renamed fields costs no copy.
        ev = read_aedat4(str(f))
        d = ev.dtype
        names = {"on": "p"}
        return ev.view(np.dtype({"names": [names.get(n, n) for n in d.names],
                                 "formats": [d.fields[n][0] for n in d.names],
                                 "offsets": [d.fields[n][1] for n in d.names],
                                 "itemsize": d.itemsize}))

    frame = ToFrame(sensor_size=(346, 260, 2), time_window=WINDOW_US, include_incomplete=True)
    report("aedat4-time-10ms", f"tonic-{tonic.__version__}", runs, passes([AEDAT4], read4, frame))


def run_spikingjelly(runs):
    import types
    # spikingjelly.datasets imports torchaudio for its SpeechCommands class only; a torchaudio
    # wheel matching the installed torch's CUDA build is not always on PyPI, and none of the
    # functions measured here touch it.
    try:
        import torchaudio  # noqa: F401
    except Exception:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    import spikingjelly
    from spikingjelly.datasets import (integrate_events_by_fixed_duration,
                                       integrate_events_by_fixed_frames_number, load_ATIS_bin)
    from importlib.metadata import version

    tool = f"spikingjelly-{version('spikingjelly')}"
    files = nmnist_files()
    for case, split in (("nmnist-count-T8", "number"), ("nmnist-time-T8", "time")):
        frame = lambda ev, split=split: integrate_events_by_fixed_frames_number(ev, split, T, 34, 34)
        report(case, tool, runs, passes(files, load_ATIS_bin, frame))

    # SpikingJelly has no AEDAT 4 reader: decode with `aedat` (what tonic uses), frame with SJ.
    import aedat

    def read(f):
        packets = [p["events"] for p in aedat.Decoder(str(f)) if "events" in p]
        ev = np.concatenate(packets)
        return {"t": ev["t"], "x": ev["x"], "y": ev["y"], "p": ev["on"].astype(np.uint8)}

    frame = lambda ev: integrate_events_by_fixed_duration(ev, WINDOW_US, 260, 346)
    report("aedat4-time-10ms", tool + "+aedat", runs, passes([AEDAT4], read, frame))


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "tonic"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    {"tonic": run_tonic, "spikingjelly": run_spikingjelly}[which](runs)
