"""`python -m ot_matfree demo`: its options, its errors and its progress bar.

The option checks call `main` in this process: they end before any JAX work
(a fresh interpreter would spend its time importing JAX). The demo itself runs
at tiny sizes: float64 here (the test process already enables x64), float32
in a fresh interpreter, where x64 is off as it is for a user.
"""

import re
import subprocess
import sys

import pytest

from ot_matfree.__main__ import main

from ..helpers import smoke_env


def _main(capsys, *args):
    """`(exit status, stdout, stderr)` of `python -m ot_matfree demo ARGS`."""
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *map(str, args)])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_help_describes_every_option(capsys):
    status, out, _ = _main(capsys, "--help")
    assert status == 0
    out = " ".join(out.split())
    for option in ("--n", "--m", "--d", "--epsilon", "--seed", "--dtype", "--device"):
        assert re.search(rf"{option} [A-Z{{][^ ]* [a-z(]", out), f"{option} is not described"
    assert "{float32,float64}" in out and "{auto,cpu,gpu}" in out
    assert "float32 halves the memory" in out and "Exit status" in out


@pytest.mark.parametrize("args, message", [
    (("--n", "-5"), "argument --n: must be at least 1, got '-5'"),
    (("--m", "0"), "argument --m: must be at least 1, got '0'"),
    (("--d", "0"), "argument --d: must be at least 1, got '0'"),
    (("--n", "2.5"), "argument --n: expected a positive integer, got '2.5'"),
    (("--n", "many"), "argument --n: expected a positive integer, got 'many'"),
    (("--epsilon", "0"), "argument --epsilon: must be a finite number > 0"),
    (("--epsilon", "inf"), "argument --epsilon: must be a finite number > 0"),
    (("--dtype", "float16"), "argument --dtype: invalid choice: 'float16'"),
    (("--device", "tpu"), "argument --device: invalid choice: 'tpu'"),
])
def test_invalid_options_are_refused(capsys, args, message):
    status, out, err = _main(capsys, *args)
    assert status == 2 and out == ""
    assert message in err, err


def test_integral_sizes_in_any_notation_are_accepted(capsys):
    # 1e12 parses as 10^12 points, which the memory check then refuses (half
    # a million GiB), before any array is made.
    status, out, err = _main(capsys, "--n", "1e12")
    assert status == 2 and out == ""
    assert re.search(r"--n 1,000,000,000,000, --m 1,000,000,000,000, --d 3 in float64 need "
                     r"at least [\d,.]+ GiB of memory; this machine has [\d,.]+ GiB", err), err


def test_missing_tqdm_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now fails
    status, out, err = _main(capsys, "--n", "8")
    assert status == 3 and out == ""
    assert 'pip install "ot-matfree[demo]"' in err


def _check_run(out: str, err: str, dtype: str) -> None:
    assert "demo OK" in out and dtype in out, out + err[-3000:]
    iterations = int(re.search(r"\((\d+) iterations, converged True", out).group(1))
    # The bar's last refresh shows the count the summary reports (41 and 31
    # here when written: not multiples of the bar's update interval, 10).
    counts = re.findall(r"Sinkhorn: (\d+) it", err.replace("\r", "\n"))
    assert counts and int(counts[-1]) == iterations, (counts, iterations)


def test_demo_float64(capfd):
    main(["demo", "--n", "40", "--m", "30", "--d", "2", "--seed", "1"])  # returns: demo OK
    out, err = capfd.readouterr()
    _check_run(out, err, "float64")


def test_demo_float32():
    proc = subprocess.run(
        [sys.executable, "-m", "ot_matfree", "demo", "--n", "40", "--m", "30", "--d", "2",
         "--seed", "1", "--dtype", "float32"],
        capture_output=True, text=True, timeout=300, env=smoke_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_run(proc.stdout, proc.stderr, "float32")
