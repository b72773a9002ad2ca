"""The method registry and `crckd methods`."""

import os
import re
import subprocess
import sys

from crckd.cli import main
from crckd.methods import available_methods, get_method
from crckd.methods.crckd import CRCKD


def test_required_methods_are_registered_with_references():
    names = {spec.name for spec in available_methods()}
    assert {"ce", "mt", "crckd", "mt+ccd", "mt+crp", "crckd-unsup", "crckd-exact"} <= names
    assert all(spec.reference for spec in available_methods())


def test_ablations_share_the_crckd_class_with_other_defaults():
    assert get_method("mt+ccd").cls is CRCKD
    assert get_method("mt+ccd").defaults == {"crp": {"weight": 0.0}}
    assert get_method("crckd-exact").defaults == {"ccd": {"positives": "exact"}}


def test_methods_command_lists_every_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "defaults: method.distill.kd_weight=0.9 method.distill.ce_weight=0.1" in out
    assert "defaults: method.crp.weight=0.0" in out  # mt+ccd
    for spec in available_methods():
        assert spec.name in out
    # Each method's entry says what it does with unlabelled images.
    entries = {block.split()[0]: block for block in re.split(r"\n(?=\S)", out)}
    assert "with unlabelled images: uses the labelled only" in entries["ce"]
    assert "with unlabelled images: uses the labelled only" in entries["dkd"]
    assert "with unlabelled images: learns from them too" in entries["crckd"]
    assert "with unlabelled images: learns from them too" in entries["src_mt"]


def test_methods_into_a_closed_pipe_exits_quietly():
    reader, writer = os.pipe()
    os.close(reader)  # like `crckd methods | head` after head has stopped reading
    try:
        done = subprocess.run(
            [sys.executable, "-m", "crckd", "methods"], stdout=writer, stderr=subprocess.PIPE
        )
    finally:
        os.close(writer)
    assert done.returncode == 141
    assert done.stderr == b""
