"""Run an example's command and keep what it printed as a results file, with where it came from.

    python3 examples/record.py 'demo-{lstm}-s1' -- make demo SEED=1
    python3 examples/record.py digits-rnnfused-s1 -- python3 examples/digits_classifier/main.py --seed 1

The command runs as it would by hand (its output passes through). Its ``RESULT key=value ...`` line is
parsed; the results file ``examples/results/<name>.json`` holds those fields. A command that prints
several RESULT lines (``make demo``: one per arm) is recorded as one file per line when the name has
``{field}`` placeholders, filled from each line (``demo-{lstm}-s1`` -> ``demo-rnnfused-s1.json`` and
``demo-torch-s1.json``); each file holds its line's fields, the wall time of the whole
command (for ``make demo`` that includes the set-up, and the build when ``built_extension`` is true: no
``rnnfused/_C*.so`` existed before), and the provenance:
commit, date, machine, torch, thread count and the load average before and after (a busy machine makes
the times meaningless, so the report shows it). A ``plot=PATH`` field is copied to
``examples/results/<name>.png``; a ``history=PATH`` field (the language model's per-epoch history and its arguments) is
embedded. ``examples/report.py`` renders the README section from these files; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "examples" / "results"


def parse_results(stdout: str) -> list[dict]:
    """The fields of every ``RESULT k=v ...`` line, in order; a ValueError if there is none."""
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise ValueError("the command printed no RESULT line")
    return [dict(field.split("=", 1) for field in line.split()[1:] if "=" in field) for line in lines]


def parse_result(stdout: str) -> dict:
    """The fields of the last ``RESULT k=v ...`` line; a ValueError if there is none."""
    return parse_results(stdout)[-1]


def file_names(name: str, results: list[dict]) -> list[str]:
    """One results-file name per RESULT line: ``name`` with ``{field}`` filled from that line's fields
    (``demo-{lstm}-s1`` -> ``demo-rnnfused-s1``, ``demo-torch-s1``). A name without a placeholder takes
    the last line only, as before; the names must come out distinct."""
    if "{" not in name:
        return [name]
    try:
        names = [name.format(**r) for r in results]
    except KeyError as e:
        raise SystemExit(f"record.py: a RESULT line has no field {e} for the name {name!r}") from None
    if len(set(names)) != len(names):
        raise SystemExit(f"record.py: the name {name!r} gives the same file for two RESULT lines: {names}")
    for n in names:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", n):
            raise SystemExit(f"record.py: results-file name must be letters, digits, '.', '_' or '-', got {n!r}")
    return names


def torch_info() -> dict:
    """torch's version and default thread count, asked of a fresh interpreter (as the command saw them)."""
    code = "import json, torch; print(json.dumps(dict(torch=torch.__version__, threads=torch.get_num_threads())))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def record(name: str, command: list[str], cwd: Path, keep_plot: bool = True) -> list[dict]:
    if not re.fullmatch(r"[A-Za-z0-9._{}-]+", name):
        raise SystemExit(f"name must be letters, digits, '.', '_', '-' or {{field}}, got {name!r}")
    built_before = any((REPO / "rnnfused").glob("_C*.so"))
    load_before = os.getloadavg()
    start = time.time()
    # stdout is read line by line (and echoed) for the RESULT line; stderr (progress bars) passes through.
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, text=True, bufsize=1)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)
    returncode = proc.wait()
    wall_s = time.time() - start
    load_after = os.getloadavg()
    if returncode != 0:
        raise SystemExit(f"record.py: {' '.join(command)} exited with {returncode}; nothing recorded")
    results = parse_results("".join(lines))
    names = file_names(name, results)
    results = results[-len(names):]
    # Imported only now: on a fresh machine the command itself (make demo) is what installs torch.
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _timing import cpu_model, git_commit

    RESULTS.mkdir(parents=True, exist_ok=True)
    provenance = dict(command=" ".join(command), wall_s=round(wall_s, 1), built_extension=not built_before,
                      commit=git_commit(),
                      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      machine=cpu_model(), cpus=os.cpu_count(), load_avg_before=round(load_before[0], 2),
                      load_avg_after=round(load_after[0], 2), python=sys.version.split()[0], **torch_info())
    entries = []
    for file_name, result in zip(names, results):
        entry = dict(name=file_name, result=result, **provenance)
        if "history" in result:
            with open(cwd / result["history"]) as f:
                history = json.load(f)
            entry["history"], entry["args"] = history["history"], history["args"]
        if keep_plot and "plot" in result:
            plot = RESULTS / f"{file_name}.png"
            shutil.copyfile(cwd / result["plot"], plot)
            entry["plot_file"] = plot.name
        out = RESULTS / f"{file_name}.json"
        out.write_text(json.dumps(entry, indent=1) + "\n")
        print(f"record.py: {file_name}: wall {wall_s:.1f} s, load average {load_before[0]:.2f} -> "
              f"{load_after[0]:.2f}; wrote {os.path.relpath(out, REPO)}", file=sys.stderr)
        entries.append(entry)
    return entries


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("name", help="results file name (examples/results/<name>.json)")
    p.add_argument("--no-plot", action="store_true",
                   help="do not copy the run's plot (the repeated seeds of a multi-seed record)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command to run after --")
    record(args.name, command, REPO, keep_plot=not args.no_plot)


if __name__ == "__main__":
    main()
