"""The prepared GPU command's own logic, checked on the CPU: the mix-conv form it picks from its timings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from gpu_check import choose_mixconv_form  # noqa: E402


def _timings(**per_form_ms):
    shapes = [(32, 32, 32), (128, 128, 8), (256, 256, 4)]
    return {"rows": [{"c_in": a, "c_out": b, "size": s, "dtype": "fp32", "layout": "nhwc", "ms": dict(per_form_ms)}
                     for a, b, s in shapes]}


def test_a_clearly_faster_single_form_is_chosen_and_named_as_model_args_knows_it():
    form, why = choose_mixconv_form(_timings(auto=10, wide=5, wide_matmul=7, grouped=12, bmm_whole_batch=9))
    assert form == "wide" and "beats" in why
    form, _ = choose_mixconv_form(_timings(auto=10, wide=9.5, wide_matmul=9.5, grouped=12, bmm_whole_batch=4))
    assert form == "bmm"  # the whole-batch timing stands for model_args.form=bmm (one chunk on a GPU)


def test_the_per_layer_choice_stays_unless_beaten_by_the_margin():
    form, why = choose_mixconv_form(_timings(auto=10, wide=9.5, wide_matmul=11, grouped=12, bmm_whole_batch=13))
    assert form == "auto" and "kept" in why
    assert choose_mixconv_form({"rows": []})[0] == "auto"
    assert choose_mixconv_form(_timings(auto=10, wide=1), dtype="bf16")[0] == "auto"  # no bf16 rows


def test_the_layer_benchmark_writes_the_timings_the_chooser_reads(tmp_path):
    out = tmp_path / "forms.json"
    subprocess.run([sys.executable, str(BENCH / "mixconv_layer.py"), "--shapes", "4:6:8,4:4:4", "--batch", "3",
                    "--dtypes", "fp32", "--layouts", "nchw", "--no-naive", "--device", "cpu", "--json", str(out)],
                   check=True, capture_output=True, timeout=120)
    timings = json.loads(out.read_text())
    assert [(r["c_in"], r["c_out"], r["size"]) for r in timings["rows"]] == [(4, 6, 8), (4, 4, 4)]
    assert set(timings["rows"][0]["ms"]) == {"plain", "wide", "wide_matmul", "grouped", "bmm", "bmm_whole_batch",
                                             "auto"}
    form, why = choose_mixconv_form(timings)
    assert form in ("auto", "wide", "wide_matmul", "grouped", "bmm") and "summed over 2 shapes" in why
