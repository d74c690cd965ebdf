"""Does a change keep every number? Runs one test.py command with an earlier commit's code (a temporary git
worktree) and with this checkout's, on the same machine and data, and compares every number of the two JSON
reports with == (run times aside). Exit status 1 when any number differs.

    python bench/same_numbers.py --baseline 2055442 -- --obj bottle --shot 2 --checkpoint none \
        --backbone resnet18 --backbone_weights ../shared/weights/resnet18_imagenet_to_layer3.pth \
        --data_path ../shared/data/mvtec-mini
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.worktree import checkout  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.errors import UserError  # noqa: E402

TIMINGS = {"seconds"}  # the only numbers allowed to differ


def numbers(report, path=""):
    """(path, value) of every number in a JSON report, timings left out."""
    if isinstance(report, dict):
        for key, value in report.items():
            if key not in TIMINGS:
                yield from numbers(value, f"{path}/{key}")
    elif isinstance(report, list):
        for index, value in enumerate(report):
            yield from numbers(value, f"{path}/{index}")
    elif isinstance(report, (int, float)) and not isinstance(report, bool):
        yield path, report


def run_test(tree, test_args, out):
    """test.py of `tree` from the caller's folder (relative paths mean the same for both) -> its report."""
    run = subprocess.run([sys.executable, str(tree / "test.py"), *test_args, "--out", str(out)],
                         capture_output=True, text=True)
    if run.returncode:
        raise UserError(f"test.py of {tree} failed:\n{run.stderr.strip()}")
    return json.loads(out.with_suffix(".json").read_text())


def differences(before, after):
    """Paths whose numbers differ or exist on one side only, with both values (None where missing). Spreads
    computed with another ddof (reports without std_ddof used 0, later ones 1) are not comparable: left out."""
    before, after = dict(numbers(before)), dict(numbers(after))
    if before.get("/std_ddof", 0) != after.get("/std_ddof", 0):
        before, after = ({p: v for p, v in side.items() if not p.endswith("/std") and p != "/std_ddof"}
                         for side in (before, after))
    return len(before), [(path, before.get(path), after.get(path)) for path in sorted(before.keys() | after.keys())
                         if before.get(path) != after.get(path)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     usage="%(prog)s --baseline COMMIT -- TEST.PY ARGUMENTS")
    parser.add_argument("--baseline", required=True, help="the earlier commit (from git log)")
    parser.add_argument("test_args", nargs=argparse.REMAINDER, help="test.py's arguments, after --")
    args = parser.parse_args()
    test_args = args.test_args[1:] if args.test_args[:1] == ["--"] else args.test_args
    if not test_args:
        raise UserError("give test.py's arguments after --, e.g. -- --obj bottle --shot 2 --checkpoint none ...")
    if "--out" in test_args:
        raise UserError("leave --out out: both reports go to a temporary folder")
    with tempfile.TemporaryDirectory() as folder, checkout(args.baseline) as tree:
        before = run_test(tree, test_args, Path(folder) / "baseline")
        after = run_test(ROOT, test_args, Path(folder) / "ours")
    count, differ = differences(before, after)
    print(f"test.py {' '.join(test_args)}")
    print(f"commit {args.baseline} against this checkout: {count} numbers, {len(differ)} differ")
    for path, old, new in differ:
        gap = f"  (|difference| {abs(new - old):.3g})" if old is not None and new is not None else ""
        print(f"  {path}: {old} -> {new}{gap}")
    if differ:
        sys.exit(1)
    print("IDENTICAL")


if __name__ == "__main__":
    run_main(main)
