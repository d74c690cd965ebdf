"""Command-line pieces shared by train.py, test.py and predict.py. A user's mistake (UserError) becomes
one 'error: ...' line and exit code 2, like argparse's own errors; real bugs still raise with a traceback."""
import argparse
import os
import shlex
import sys
from pathlib import Path

import torch

from utils.errors import UserError
from utils.io import missing_folders
from utils.precision import strict_fp32


class Parser(argparse.ArgumentParser):
    """argparse with its errors (unknown option, invalid choice) on one line, like ours."""

    def error(self, message):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def run_main(main, on_interrupt=None):
    """Ctrl-C ends with one line too (exit code 130, as a shell's), plus on_interrupt()'s hint if given."""
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"interrupted{'; ' + on_interrupt() if on_interrupt else ''}", file=sys.stderr)
        sys.exit(130)


def command_line():
    """This process's command, shell-quoted (paths with spaces paste back as one argument), for reports."""
    return shlex.join(["python", *sys.argv])


def add_data_args(parser):
    parser.add_argument("--data_path", default="MVTec", help="MVTec-layout folder (CAT/train/good, CAT/test/...); "
                                                             "default MVTec, as the official code's ./MVTec/")
    parser.add_argument("--dataset", help="name for support_set/<dataset>/ (default: the data folder's name)")


def add_device_args(parser, training):
    """--device, and the batch option of the entry point (the model's own options: ModelConfig.add_args)."""
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    if training:
        parser.add_argument("--batch_size", type=positive_int, default=32,
                            help="queries per training step, each with K supports (the paper: 32)")
    else:
        parser.add_argument("--eval_batch_size", type=positive_int, default=32,
                            help="images per forward pass when embedding (memory only; results do not change)")


def positive_int(text):
    """argparse type: an integer of at least 1 (argparse turns the error into one line)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def pick_device(name):
    """The --device, with strict float32 arithmetic on it (no TF32, see utils/precision.py)."""
    strict_fp32()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} but no CUDA device is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device '{name}'; use auto, cpu, cuda or cuda:N")


def check_writable_dir(folder):
    """Fail before any compute if outputs cannot be written. Leaves nothing behind (a failed run must not leave
    empty folders): missing folders are created to prove it can be done, then removed; atomic writes create
    them again when there is something to write."""
    folder = Path(folder)
    missing = missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder '{folder}' ({exc.strerror}); choose a writable location")
    writable = os.access(folder, os.W_OK)
    for created in missing:  # deepest first
        created.rmdir()
    if not writable:
        raise UserError(f"output folder '{folder}' is not writable; choose a writable location")


def check_writable_file(path, option):
    """Fail before any compute if the file given with option cannot be written."""
    if Path(path).is_dir():
        raise UserError(f"{option} '{path}' is a folder; pass a file name")
    check_writable_dir(Path(path).parent)
