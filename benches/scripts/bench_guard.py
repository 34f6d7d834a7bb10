#!/usr/bin/env python3
"""Guard against speed regressions: a fresh vlm-bench run against a committed baseline.

Absolute times on our VMs drift by 30% or more between runs, but the ratio of two
configurations measured in one process holds far better. So the baseline
(`benches/baseline.json`) records, per shape, per CPU class and per configuration (dtype x
quantization), each stage's speed relative to the unquantized f32 row of the same run:

    vision, ttft: f32 time / this row's time      (> 1: faster than f32)
    prefill, decode: this row's tok/s / f32 tok/s

`--check` (the default) runs vlm-bench on the shape and flags every stage whose ratio dropped by
more than `--tolerance` (20%) below the baseline; it exits 1 if any did. `--record` writes the
fresh ratios into the baseline instead (do it in the commit that makes a stage faster, and say
so). Run it on a quiet machine: nothing else building or benchmarking.

Ratios do not carry across instruction sets (an AVX-512 CPU runs other kernels than an AVX2
one: the Q8_0/f32 decode ratio was 3.1 on one and 1.3 on the other before the AVX2 kernels),
so each CPU class (`cpu_class()`: x86-avx512, x86-avx2, or the machine name) has its own
baseline; a class with none yet says so and asks for `--record`.

    cargo build --release -p vlm-benches
    python3 benches/scripts/make_real_shape.py qwen2-vl-2b --out /tmp/real/qwen2-vl-2b
    python3 benches/scripts/bench_guard.py --shape qwen2-vl-2b --model /tmp/real/qwen2-vl-2b

The shapes, with the image size, prompt and configurations each is measured at, are listed in
SHAPES below; the prompt is compare_transformers.py's.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_transformers import PROMPT  # noqa: E402

IMAGE = ROOT / "tests" / "fixtures" / "reference" / "images" / "large_astronaut.png"

# shape -> (image side in pixels, quantizations measured beside the f32 row)
SHAPES = {
    "qwen2-vl-2b": (448, ["q8_0", "q4k"]),
    "smolvlm-256m": (512, ["q8_0", "q4k"]),
}

# stage -> (vlm-bench JSON key, True when larger is better)
STAGES = {
    "vision": ("vision_ms_per_image", False),
    "ttft": ("ttft_ms", False),
    "prefill": ("prefill_tok_s", True),
    "decode": ("decode_tok_s", True),
}


def cpu_class():
    """The instruction-set class whose kernels this CPU runs, as the baseline is keyed."""
    import platform

    machine = platform.machine()
    try:
        flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo")
                      if line.startswith("flags")), [])
    except OSError:
        flags = []
    if machine in ("x86_64", "AMD64"):
        if "avx512f" in flags and "avx512_vnni" in flags:
            return "x86-avx512"
        if "avx2" in flags and "fma" in flags:
            return "x86-avx2"
    return machine


def run_bench(model, image, quants, runs, new_tokens, threads):
    exe = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "vlm-bench"
    if not exe.exists():
        sys.exit(f"{exe} not found: run `cargo build --release -p vlm-benches` first")
    cmd = [str(exe), "--model", str(model), "--image", str(image), "--prompt", PROMPT,
           "--dtype", "f32", "--quant", ",".join(["none"] + quants),
           "--new-tokens", str(new_tokens), "--runs", str(runs), "--json"]
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"vlm-bench failed (exit {res.returncode}):\n{res.stderr.strip() or res.stdout.strip()}")
    out = res.stdout
    print(out[: out.index("[")].rstrip() if "[" in out else out)
    return json.loads(out[out.index("["):])


def ratios(rows):
    """Each row's stage speeds relative to the f32 unquantized row of the same run."""
    base = next((r for r in rows if r["dtype"] == "f32" and r["quant"] == "none"), None)
    if base is None:
        sys.exit("vlm-bench gave no f32 unquantized row to take ratios against")
    out = {}
    for row in rows:
        if row is base:
            continue
        label = f"{row['dtype']}+{row['quant']}"
        out[label] = {}
        for stage, (key, higher) in STAGES.items():
            a, b = row[key], base[key]
            if not a or not b:
                sys.exit(f"{label}: stage {stage} ({key}) measured {a} against f32's {b}")
            out[label][stage] = round(a / b if higher else b / a, 3)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--model", required=True, type=Path, help="the make_real_shape.py folder")
    ap.add_argument("--baseline", type=Path, default=ROOT / "benches" / "baseline.json")
    ap.add_argument("--record", action="store_true", help="write the fresh ratios as the baseline")
    ap.add_argument("--tolerance", type=float, default=0.2,
                    help="flag a stage whose ratio fell by more than this fraction (default 0.2)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    from PIL import Image

    size, quants = SHAPES[args.shape]
    image = Path(tempfile.mkdtemp()) / "bench.png"
    Image.open(IMAGE).convert("RGB").resize((size, size), Image.BICUBIC).save(image)
    fresh = ratios(run_bench(args.model, image, quants, args.runs, args.new_tokens, args.threads))

    baseline = json.loads(args.baseline.read_text()) if args.baseline.exists() else {}
    cpu = cpu_class()
    if args.record:
        baseline.setdefault(args.shape, {})[cpu] = fresh
        args.baseline.write_text(json.dumps(baseline, indent=2, sort_keys=True) + "\n")
        print(f"recorded {args.shape} on {cpu} in {args.baseline}")
        return
    want = baseline.get(args.shape, {}).get(cpu)
    if want is None:
        sys.exit(f"{args.baseline} has no baseline for {args.shape} on {cpu}: "
                 "run with --record first")
    print(f"\nbaseline: {args.shape} on {cpu}")

    print("\n| config | stage | baseline | fresh | change | |\n|---|---|---|---|---|---|")
    flagged = []
    for label, stages in want.items():
        got = fresh.get(label)
        if got is None:
            flagged.append(f"{label}: not measured")
            continue
        for stage, old in stages.items():
            new = got[stage]
            change = new / old - 1
            bad = change < -args.tolerance
            print(f"| {label} | {stage} | {old:.3f} | {new:.3f} | {change:+.0%} | "
                  f"{'REGRESSED' if bad else 'ok'} |")
            if bad:
                flagged.append(f"{label} {stage}: {old:.3f} -> {new:.3f} ({change:+.0%})")
    if flagged:
        print("\nregressions beyond the tolerance (ratios to the f32 row of the same run):")
        for f in flagged:
            print(f"  {f}")
        sys.exit(1)
    print(f"\nno stage fell more than {args.tolerance:.0%} below the baseline")


if __name__ == "__main__":
    main()
