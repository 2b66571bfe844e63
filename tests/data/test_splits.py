import subprocess
import sys
from collections import Counter

import pytest

from mtl_ray.data.splits import SplitSpec, assign_split, normalize_text


def test_fractions_within_tolerance_on_10k_strings():
    counts = Counter(assign_split(f"synthetic text {i}", 1234, 0.1, 0.1) for i in range(10_000))
    # binomial sd at n=10k, p=0.1 is 30; allow 5 sd
    assert abs(counts["validation"] - 1000) < 150
    assert abs(counts["test"] - 1000) < 150
    assert counts["train"] == 10_000 - counts["validation"] - counts["test"]


def test_same_text_same_split_and_whitespace_is_normalized():
    spec = SplitSpec(7, 0.2, 0.3)
    texts = [f"row {i}" for i in range(500)]
    assert spec.assign_many(texts) == spec.assign_many(texts)
    assert all(spec(t) == spec(f"  {t.replace(' ', chr(10) + ' ')} ") for t in texts)
    assert normalize_text(" a \n\t b ") == "a b"


def test_seed_changes_assignment():
    texts = [f"row {i}" for i in range(1000)]
    a = SplitSpec(1, 0.1, 0.1).assign_many(texts)
    b = SplitSpec(2, 0.1, 0.1).assign_many(texts)
    assert a != b


def test_deterministic_across_processes():
    # Python's str hash is salted per process; the split must not be
    code = "from mtl_ray.data.splits import assign_split; print([assign_split(f'x{i}', 5, .1, .1) for i in range(50)])"
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert len(outs) == 1
    assert outs.pop().strip() == str([assign_split(f"x{i}", 5, 0.1, 0.1) for i in range(50)])


def test_zero_fraction_never_assigns_that_split():
    assert {assign_split(f"t{i}", 0, 0.2, 0.0) for i in range(2000)} == {"train", "validation"}


def test_bad_fractions_raise():
    with pytest.raises(ValueError, match="sum to < 1"):
        assign_split("x", 0, 0.5, 0.5)
