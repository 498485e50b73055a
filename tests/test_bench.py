import json

import pytest

from canon.cli import main

pytestmark = pytest.mark.slow  # benchmarks: child processes, ViT-B with random weights


def test_bench_writes_the_figures_and_the_plot(tmp_path, capsys):
    code = main(["bench", "--sam", "vit_b", "--canonicalizer", "wrn-c4-paper", "--repeats", "1", "--device", "cpu",
                 "--json", str(tmp_path / "bench.json"), "--plot", str(tmp_path / "bench.png")])
    assert code == 0
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert {"sam_model", "sam_encoder_ms", "sam_encoder_float32_ms", "sam_precision", "canonicalizer_ms",
            "overhead_ratio", "first_click_ms", "ready_click_ms", "click_ms", "params_ratio",
            "peak_rss_mb"} <= set(figures)
    assert set(figures["sams"]) == {"vit_b"} and figures["sams"]["vit_b"]["sam_encoder_ms"] == figures["sam_encoder_ms"]
    assert figures["sam_model"] == "vit_b" and figures["sam_parameters"] > 80e6  # ViT-B SAM: about 94 M
    assert figures["overhead_ratio"] == figures["canonicalizer_ms"] / figures["sam_encoder_ms"]
    assert 0.015 < figures["params_ratio"] < 0.025  # 1.86 M of about 94 M
    assert figures["click_ms"] < figures["everything_ms"]  # 2 decoder runs against 2 x 256
    # Prepared: no encoder left, so a first click costs a cached one (the two are not ordered: timing noise).
    assert max(figures["click_ms"], figures["ready_click_ms"]) < figures["first_click_ms"]
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"| SAM vit_b image encoder, as served ({figures['sam_precision']}) |" in capsys.readouterr().out


def test_bench_refuses_an_unknown_architecture(capsys):
    assert main(["bench", "--sam", "vit_x", "--json", "unused.json"]) == 2
    assert capsys.readouterr().err.startswith("error: argument --sam: invalid choice: 'vit_x'")


def test_app_peak_memory_serves_a_click_with_vit_b_in_a_child_process():
    from benchmarks.app_memory import app_peak_memory

    figures = app_peak_memory("vit_b")
    print(f"app.py with SAM ViT-B, one click on a turned photo: peak RSS {figures['app_peak_rss_mb']:.0f} MB, "
          f"request {figures['app_request_ms']:.0f} ms")
    assert figures["app_peak_rss_mb"] > 400  # the ViT-B weights alone are 360 MB: the child really loaded them
    assert figures["app_request_ms"] > 0
