"""Long coverage-guided fuzzing of the wire decoder and the recording reader (atheris/libFuzzer).

    pip install atheris            # (the `fuzz` extra); not needed for CI, which runs hypothesis
    python bench/fuzz_atheris.py --runs 1000000 --json runs/fuzz.json

Each target runs in its own libFuzzer child process with ``-rss_limit_mb`` and
``-malloc_limit_mb``: an input that crashes it (any exception but the decoder's typed error),
or makes it allocate beyond the limit, stops the run and is reported with its input saved.
Targets:
- ``wire``:      `wire.decode` of 1-5 parts cut from the input (plus `link_of`, `unpack`);
- ``recording``: `wire.iter_recording` over the input as an MCAP file, seeded with a real
  recording (tests/test_fuzz_recording.py writes the same one), every envelope decoded.
Writes JSON (runs, seconds, execs/s, peak RSS, crashes) and prints a short table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("wire", "recording")
RSS_LIMIT_MB = 1024
MALLOC_LIMIT_MB = 256


def fuzz_wire(data: bytes) -> None:
    import atheris

    from edge import wire

    fdp = atheris.FuzzedDataProvider(data)
    n_parts = fdp.ConsumeIntInRange(1, 5)
    parts = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096)) for _ in range(n_parts - 1)]
    parts.append(fdp.ConsumeBytes(fdp.remaining_bytes()))
    wire.link_of(parts)
    try:
        wire.decode(parts, max_payload_bytes=1 << 16)
    except wire.WireError:
        pass
    try:
        wire.unpack("audio/x", parts[-1])
    except wire.WireError:
        pass


_SHM = Path("/dev/shm")
_SCRATCH = (_SHM if _SHM.is_dir() else Path(tempfile.gettempdir())) / f"fuzz-{os.getpid()}.mcap"


def fuzz_recording(data: bytes) -> None:
    from edge import wire

    _SCRATCH.write_bytes(data)
    for _, _, parts in wire.iter_recording(str(_SCRATCH)):
        try:
            wire.decode(parts)
        except wire.WireError:
            pass


def child(target: str, libfuzzer_args: list[str]) -> None:
    import atheris
    import mcap.stream_reader  # noqa: F401 - imported first: only our code is instrumented
    import numpy  # noqa: F401

    with atheris.instrument_imports(include=["edge"]):
        import edge.wire  # noqa: F401 - instrumented for coverage
    fn = {"wire": fuzz_wire, "recording": fuzz_recording}[target]
    atheris.Setup([sys.argv[0], *libfuzzer_args], fn)
    atheris.Fuzz()


def seed_corpus(target: str, where: Path) -> Path:
    corpus = where / f"corpus-{target}"
    corpus.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    if target == "recording":
        from tests.test_fuzz_recording import recording

        (corpus / "drive.mcap").write_bytes(recording(12))  # small: more inputs per second
    else:
        from tests.test_fuzz_wire import valid_parts

        topic, header, payload = valid_parts()
        # FuzzedDataProvider layout is opaque; a concatenation still seeds useful tokens
        (corpus / "envelope").write_bytes(topic + header + payload)
    return corpus


def run_target(target: str, runs: int, work: Path) -> dict[str, Any]:
    corpus = seed_corpus(target, work)
    artifacts = work / f"crash-{target}-"
    cmd = [
        sys.executable, __file__, "--child", target, "--",
        f"-runs={runs}", f"-rss_limit_mb={RSS_LIMIT_MB}", f"-malloc_limit_mb={MALLOC_LIMIT_MB}",
        "-max_len=8192", f"-artifact_prefix={artifacts}", "-print_final_stats=1", str(corpus),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    (work / f"fuzz-{target}.log").write_text(log)
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    peak = re.search(r"stat::peak_rss_mb:\s+(\d+)", log)
    crashes = sorted(str(p) for p in work.glob(f"crash-{target}-*"))
    return {
        "target": target,
        "runs": int(done.group(1)) if done else None,
        "seconds": round(seconds, 1),
        "execs_per_s": round(int(done.group(1)) / seconds) if done else None,
        "peak_rss_mb": int(peak.group(1)) if peak else None,
        "exit_code": proc.returncode,
        "crashes": crashes,
        "ok": proc.returncode == 0 and not crashes and done is not None,
        "tail": "" if proc.returncode == 0 else log[-1500:],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    parser.add_argument("--json", default="runs/fuzz_atheris.json")
    parser.add_argument("--work", help="corpus/crash dir (default: a temp dir)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="fuzz-"))
    targets = TARGETS if args.target == "all" else (args.target,)
    results = [run_target(t, args.runs, work) for t in targets]
    report = {
        "runs_per_target": args.runs,
        "rss_limit_mb": RSS_LIMIT_MB,
        "malloc_limit_mb": MALLOC_LIMIT_MB,
        "max_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
        "targets": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'target':10} {'runs':>9} {'s':>7} {'exec/s':>8} {'peak MB':>8} ok")
    for r in results:
        print(f"{r['target']:10} {r['runs']!s:>9} {r['seconds']:>7} {r['execs_per_s']!s:>8} "
              f"{r['peak_rss_mb']!s:>8} {r['ok']}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
