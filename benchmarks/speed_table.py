"""The README's speed table, regenerated in one command: runs benchmarks/throughput.py (training,
evaluation) and benchmarks/md_throughput.py (MD, 96 and 768 atoms) against upstream nequip /
nequip-allegro, one after the other (never at once), stores their logs and JSON under --out, prints
the table and, with --write-readme, puts it into README.md between its speed-table markers.

    python benchmarks/speed_table.py [--write-readme] [--out benchmarks/results/speed_<date>]

Ratios are upstream time / stableff time (higher = stableff faster), "as shipped" / "with
stableff's allocator settings", each the best round of the scripts' interleaved rounds; and
against upstream's fastest path (eager or compiled: benchmarks/peer_compiled.py) with stableff's
fastest (eager or compiled: `--compile`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- speed-table:start -->", "<!-- speed-table:end -->"
LABELS = ("as shipped", "stableff's malloc")


def run(script: str, extra: list[str], out: Path, name: str) -> dict:
    """Run one benchmark script, its output to out/NAME.txt and its JSON to out/NAME.json."""
    result_json = out / f"{name}.json"
    command = [sys.executable, str(ROOT / "benchmarks" / script), *extra, "--json", str(result_json)]
    print("running " + " ".join(command[1:]), flush=True)
    with open(out / f"{name}.txt", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"{script} failed (exit {code}); its output is in {out / f'{name}.txt'}")
    return json.loads(result_json.read_text())


def table(throughput: dict, md: dict, when: str, logs: str) -> str:
    """The README block: what was measured, when, where the logs are, and the table."""
    names = {"nequip": "NequIP", "allegro": "Allegro"}
    lines = [
        "stableff against the reference codes (upstream `nequip` and `nequip-allegro`, the same",
        "hyper-parameters, bench-S, float32, 96-atom Hf32O64 and its 768-atom supercell, 2 threads), as",
        "ratios upstream time / stableff time measured in one run (\"as shipped\" / \"with stableff's",
        "allocator settings\"; the best of the scripts' interleaved rounds); measured on this project's",
        f"2-core CPU, {when} (logs in `{logs}/`).",
        "Rows \"eager\": upstream's eager path; rows \"fastest\": against the fastest of upstream's eager and",
        "compiled paths (`torch.compile` training, AOT Inductor models as `nequip-compile` builds them,",
        "in its ASE calculator for MD; each compiled with 1 thread and with 2, the faster counting;",
        "compile time not counted) against the faster of stableff's eager and compiled paths (`--compile`:",
        "torch.compile, CPU kernels on 1 thread); in brackets the paths that counted, upstream's / stableff's:",
        "",
        "| | training (frames/s) | evaluation (ms) | MD 96 atoms (ms/step) | MD 768 atoms (ms/step) |",
        "|---|---|---|---|---|",
    ]
    short = lambda path: "compiled" if "compiled" in path or "AOT" in path else "eager"
    for model, entry in throughput["models"].items():
        md_ratios = md[model]["ratios"]
        by_label = {label: next(v for row, v in md_ratios.items() if f"({label})" in row) for label in LABELS}
        cells = [" / ".join(f"{entry['ratios'][label][kind]:.2f}x" for label in LABELS) for kind in ("training", "evaluation")]
        cells += [" / ".join(f"{by_label[label][size]:.2f}x" for label in LABELS) for size in ("96", "768")]
        lines.append(f"| {names.get(model, model)} vs {entry['upstream']}, eager (as shipped / stableff's malloc) | " + " | ".join(cells) + " |")
        if "fastest" in entry and "fastest" in md[model]:
            both = lambda f: f"{f['ratio']:.2f}x ({short(f['path'])} / {f.get('stableff_path', 'eager')})"
            cells = [both(entry["fastest"][kind]) for kind in ("training", "evaluation")] + [both(md[model]["fastest"][size]) for size in ("96", "768")]
            lines.append(f"| {names.get(model, model)} vs {entry['upstream']}, fastest | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    today = datetime.date.today().isoformat()
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"speed_{today}"), help="folder for the logs and JSON")
    parser.add_argument("--write-readme", action="store_true", help="replace the table between the speed-table markers of README.md")
    parser.add_argument("--md-steps", type=int, default=40)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out)  # known before the runs
    if args.write_readme:  # checked before the runs: a README without its markers is said at once
        text = README.read_text()
        if text.count(START) != 1 or text.count(END) != 1:
            raise SystemExit(f"{README}: needs exactly one '{START}' and one '{END}' around the speed table")
    begin = datetime.datetime.now(datetime.timezone.utc)
    throughput = run("throughput.py", ["--models", "nequip,allegro", "--peer", "nequip", "--peer-compiled", "--compile"], out, "throughput")
    md = run("md_throughput.py", ["--peer", "nequip", "--peer-compiled", "--compile", "--steps", str(args.md_steps)], out, "md_throughput")
    end = datetime.datetime.now(datetime.timezone.utc)
    when = f"{begin:%Y-%m-%d %H:%M}-{end:%H:%M} UTC"
    block = table(throughput, md, when, logs)
    print("\n" + block)
    if args.write_readme:
        text = README.read_text()
        head, rest = text.split(START)
        _, tail = rest.split(END)
        README.write_text(f"{head}{START}\n{block}{END}{tail}")
        print(f"written into {README}")


if __name__ == "__main__":
    main()
