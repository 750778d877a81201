"""What both CDM conformance scripts check with: refusals by their problem code, and whether a
key decrypts the demo stream (Debian's ffmpeg)."""

import argparse
import subprocess
import sys


class Failure(Exception):
    pass


def check(condition, what):
    if not condition:
        raise Failure(what)


def code(answer):
    """licensegate's answer as a word: `ok`, or its problem's code."""
    if 200 <= answer.status_code < 300:
        return "ok"
    try:
        return answer.json().get("code", "?")
    except ValueError:
        return f"{answer.status_code} {answer.text[:200]}"


def expect(answer, wanted):
    got = code(answer)
    check(got == wanted, f"expected {wanted}, got {answer.status_code} {got}: {answer.text[:300]}")
    return answer


def decode_errors(media, key_hex):
    """Errors ffmpeg reports decoding the CENC stream with this key (0: it plays)."""
    run = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-decryption_key", key_hex, "-i", media,
         "-f", "null", "-"],
        capture_output=True, text=True, timeout=120)
    return len(run.stderr.splitlines())


def check_decrypts(media, key_hex):
    """The key decrypts the demo stream, and the same key with its last byte changed does not:
    the check can fail."""
    check(decode_errors(media, key_hex) == 0, "the demo stream decodes with the license's key")
    wrong = key_hex[:-2] + ("00" if key_hex[-2:] != "00" else "11")
    check(decode_errors(media, wrong) > 0, "a wrong key makes the decode fail")


def command_line(setup_name, setup_argument, setup, run_arguments, runs):
    """The scripts' command line: `setup_name setup_argument` runs `setup`; each of `runs` (a
    command name and its scenarios) takes `run_arguments` (each required; a tuple is a name and
    a type) and the gate's, and reports each of `scenarios(args)` as it passes, exiting 1 at the
    first failure."""
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(setup_name).add_argument(setup_argument)
    for run_name in runs:
        run_command = commands.add_parser(run_name)
        for argument in ("--gate", "--admin", "--admin-token", "--tokens", "--content", "--media",
                         *run_arguments):
            name, kind = argument if isinstance(argument, tuple) else (argument, str)
            run_command.add_argument(name, type=kind, required=True)
    args = parser.parse_args()
    if args.command == setup_name:
        setup(getattr(args, setup_argument))
        return
    try:
        for passed in runs[args.command](args):
            print(f"ok: {passed}", flush=True)
    except Failure as failure:
        print(f"FAILED: {failure}", flush=True)
        sys.exit(1)
