"""Run an example's command and keep what it printed as a results file, with where it came from.

    python3 examples/record.py demo-rnnfused -- make demo
    python3 examples/record.py demo-torch -- make demo LSTM=torch
    python3 examples/record.py digits-rnnfused -- python3 examples/digits_classifier/main.py

The command runs as it would by hand (its output passes through). Its ``RESULT key=value ...`` line is
parsed; the results file ``examples/results/<name>.json`` holds those fields, the wall time of the whole
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


def parse_result(stdout: str) -> dict:
    """The fields of the last ``RESULT k=v ...`` line; a ValueError if there is none."""
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise ValueError("the command printed no RESULT line")
    return dict(field.split("=", 1) for field in lines[-1].split()[1:] if "=" in field)


def torch_info() -> dict:
    """torch's version and default thread count, asked of a fresh interpreter (as the command saw them)."""
    code = "import json, torch; print(json.dumps(dict(torch=torch.__version__, threads=torch.get_num_threads())))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def record(name: str, command: list[str], cwd: Path) -> dict:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise SystemExit(f"name must be letters, digits, '.', '_' or '-', got {name!r}")
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
    result = parse_result("".join(lines))
    # Imported only now: on a fresh machine the command itself (make demo) is what installs torch.
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _timing import cpu_model, git_commit

    RESULTS.mkdir(parents=True, exist_ok=True)
    entry = dict(name=name, command=" ".join(command), wall_s=round(wall_s, 1), result=result,
                 built_extension=not built_before,
                 commit=git_commit(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 machine=cpu_model(), cpus=os.cpu_count(), load_avg_before=round(load_before[0], 2),
                 load_avg_after=round(load_after[0], 2), python=sys.version.split()[0], **torch_info())
    if "history" in result:
        with open(cwd / result["history"]) as f:
            history = json.load(f)
        entry["history"], entry["args"] = history["history"], history["args"]
    if "plot" in result:
        plot = RESULTS / f"{name}.png"
        shutil.copyfile(cwd / result["plot"], plot)
        entry["plot_file"] = plot.name
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(entry, indent=1) + "\n")
    print(f"record.py: {name}: wall {wall_s:.1f} s, load average {load_before[0]:.2f} -> {load_after[0]:.2f}; "
          f"wrote {os.path.relpath(out, REPO)}", file=sys.stderr)
    return entry


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("name", help="results file name (examples/results/<name>.json)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command to run after --")
    record(args.name, command, REPO)


if __name__ == "__main__":
    main()
