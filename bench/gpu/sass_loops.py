#!/usr/bin/env python3
"""Static SASS of one kernel instance, on the development machine (no GPU): compiles one CUDA
source of src/cuda for sm_90a as bench/gpu/prebuild.sh's build does (or reads an object file),
prints what ptxas said of the instance (registers, spills) and each of its loops (a backward
branch: from its target to the branch), largest first, with their instruction counts by opcode.
The counts are static: a loop's masked branches (which full tiles skip) are in them. They are the
figures the results files quote as "the step loops N / M static instructions". Beside each, the
instructions on the loop's path that takes every forward branch within it: in the decode step
loops, a two-tile step of unmasked tiles with no rescale (the masks, the rescale and the one-tile
step are what those branches skip), the figure docs/cuda.md quotes as "on the step's path".
    python3 bench/gpu/sass_loops.py src/cuda/attention_d64.cu
    python3 bench/gpu/sass_loops.py OBJ.o --function 'decode_kernelILi128ELNS1_4KindE0ELi3ELi2ELi1ELb0ELb1E' --loops 3
--function: a piece of the instance's mangled name (default: k3v2 decode at the source's head dim,
one m-tile, as the targets' 32 / 8 heads run it: the keys as M up to D = 128). cuobjdump and
nvdisasm come from PATH, the CUDA toolkit or the .venv's triton.
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["-O3", "-DNDEBUG", "-DFMT_SHARED", "-DTQ_CUDA_PORTABLE_ON_HOPPER=1", "-DTQ_CUDNN=1", "-std=c++17",
         "--expt-relaxed-constexpr", "--generate-code=arch=compute_90a,code=[sm_90a]", "-Xptxas", "-v"]
INSTR = re.compile(r"/\*([0-9a-f]{4,6})\*/\s+(.*?)\s*;")
BACK = re.compile(r"BRA\s+(?:!?U?P[T0-9]+,\s*)?0x([0-9a-f]+)")  # a branch's target (BRA 0x70b0, BRA P0, 0x4e40)


def tool(name):
    """A CUDA binary tool from PATH, the toolkit, or the .venv's triton (which bundles both)."""
    for d in [None, "/usr/local/cuda/bin", *sorted(ROOT.glob(".venv/lib/python3*/site-packages/triton/backends/nvidia/bin"))]:
        p = shutil.which(name, path=None if d is None else str(d))
        if p:
            return p
    sys.exit(f"sass_loops.py: no {name} (the CUDA toolkit's, or the .venv's triton: scripts/setup.sh)")


def instructions(sass):
    """[(address, instruction text)] of a cuobjdump -sass listing, in order."""
    return [(int(m.group(1), 16), m.group(2)) for m in map(INSTR.search, sass.splitlines()) if m]


def opcode(text):
    """The opcode of an instruction, without its predicate and modifiers (`@!P0 IMAD.WIDE.U32 ...` -> IMAD)."""
    words = text.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0].split(".")[0] if words else ""


def branch_target(text):
    """A branch's target address, or None for an instruction that is no branch."""
    m = BACK.search(text) if opcode(text) == "BRA" else None
    return int(m.group(1), 16) if m else None


def loops(instrs):
    """Each backward branch's body as (size, first address, branch address, Counter of opcodes), largest first."""
    at = {a: i for i, (a, _) in enumerate(instrs)}
    out = []
    for i, (a, text) in enumerate(instrs):
        t = branch_target(text)
        if t is not None and t < a and t in at:
            body = instrs[at[t]:i + 1]
            out.append((len(body), body[0][0], a, collections.Counter(opcode(x) for _, x in body)))
    return sorted(out, key=lambda x: (-x[0], x[1]))


def taken_path(instrs, first, last):
    """The instructions from first to the loop's branch at last, taking every forward branch whose
    target is within them (and none that leaves them)."""
    at = {a: i for i, (a, _) in enumerate(instrs)}
    i, out = at[first], []
    while i < len(instrs) and instrs[i][0] <= last:
        a, text = instrs[i]
        out.append((a, text))
        t = branch_target(text)
        if t is not None and a < t <= last:
            i = at[t]
        else:
            i += 1
    return out


def ptxas_lines(log, function):
    """ptxas -v's lines for the instance (its registers and spills)."""
    out, keep = [], False
    for line in log.splitlines():
        if "Compiling entry function" in line or "Function properties for" in line:
            keep = function in line
        if keep and ("registers" in line or "spill" in line):
            out.append(line.split("info    :", 1)[-1].strip())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", help="a CUDA source of src/cuda (compiled here for sm_90a) or an object file")
    ap.add_argument("--function", help="a piece of the instance's mangled name (default: k3v2 decode, one m-tile)")
    ap.add_argument("--loops", type=int, default=4, help="loops to print (default 4)")
    ap.add_argument("--top", type=int, default=16, help="opcodes a loop (default 16)")
    a = ap.parse_args()
    src = Path(a.input)
    if not src.exists():
        sys.exit(f"sass_loops.py: no file {src}")
    function = a.function
    if function is None:
        m = re.search(r"attention_d(\d+)\.cu(\.o)?$", src.name)  # a source, or its object in a build folder
        if not m:
            sys.exit("sass_loops.py: --function is needed unless the input is src/cuda/attention_d<HEAD DIM>.cu or its .cu.o")
        d = int(m.group(1))
        function = f"decode_kernelILi{d}ELNS1_4KindE0ELi3ELi2ELi1ELb0ELb{int(d <= 128)}E"
    cuobjdump, nvdisasm = tool("cuobjdump"), tool("nvdisasm")  # before a compile of minutes, not after it
    with tempfile.TemporaryDirectory() as tmp:
        obj, log = src, ""
        if src.suffix == ".cu":
            obj = Path(tmp) / "k.o"
            print(f"sass_loops.py: compiling {src} for sm_90a (a minute or more)", file=sys.stderr, flush=True)
            r = subprocess.run([tool("nvcc"), *FLAGS, f"-I{ROOT / 'src' / 'cuda'}", f"-I{ROOT / 'include'}", "-x", "cu", "-c", str(src),
                                "-o", str(obj)], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"sass_loops.py: nvcc failed:\n{r.stderr[-3000:]}")
            log = r.stdout + r.stderr
        env = dict(os.environ, PATH=f"{Path(nvdisasm).parent}:{os.environ.get('PATH', '')}")
        r = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            sys.exit(f"sass_loops.py: cuobjdump failed: {r.stderr.strip()}")
    # the listing's functions, each from its "Function :" line to the next
    parts = re.split(r"\n\s*Function : ", r.stdout)
    found = [p for p in parts[1:] if function in p.split("\n", 1)[0]]
    if len(found) != 1:
        names = [p.split("\n", 1)[0].strip() for p in parts[1:] if "decode_kernel" in p.split("\n", 1)[0]]
        sys.exit(f"sass_loops.py: {len(found)} functions match '{function}'" + (f"; e.g. {names[:3]}" if names else ""))
    name = found[0].split("\n", 1)[0].strip()
    instrs = instructions(found[0])
    print(f"{name}: {len(instrs)} instructions")
    for line in ptxas_lines(log, name):
        print("  ptxas:", line)
    for size, first, last, ops in loops(instrs)[:a.loops]:
        path = len(taken_path(instrs, first, last))
        print(f"loop {first:#x}-{last:#x}: {size} instructions ({path} on the path taking its forward branches); " +
              ", ".join(f"{o} {n}" for o, n in ops.most_common(a.top)))


if __name__ == "__main__":
    main()
