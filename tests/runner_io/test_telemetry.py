"""Prometheus telemetry: /metrics while running, a Pushgateway push at the end."""

from __future__ import annotations

import pytest
from rio_helpers import http_get, mkey, parse_metrics
from sparsify_runner.errors import InputError
from sparsify_runner.report import LatencyStats, ModelStats, Report
from sparsify_runner.telemetry import PrometheusTelemetry, Telemetry, from_environment


def _report() -> Report:
    lat = dict(provider="CPUExecutionProvider", batch_size=1, iterations=10, median_ms=1, p90_ms=1, std_ms=0)
    return Report(
        experiment={"type": "one-shot"},
        mode="unstructured",
        baseline=ModelStats(
            file_size_bytes=4000,
            compressed_size_bytes=3000,
            latency=LatencyStats(mean_ms=2.0, throughput_items_per_s=500, **lat),
        ),
        optimized=ModelStats(
            file_size_bytes=1000,
            compressed_size_bytes=500,
            sparsity=0.6,
            latency=LatencyStats(mean_ms=1.0, throughput_items_per_s=1000, **lat),
        ),
        speedup=2.0,
    )


def test_metrics_served_while_running_and_pushed_at_the_end(pushgateway):
    tel = PrometheusTelemetry(
        experiment="resnet-a",
        namespace="team-a",
        experiment_type="one-shot",
        use_case="image-classification",
        port=0,
        addr="127.0.0.1",
        pushgateway=pushgateway,
    )
    tel.start()
    try:
        url = f"http://127.0.0.1:{tel.bound_port}/metrics"
        tel.stage("prune")
        tel.progress(0.4)
        tel.training_step(1.5, 42, 0.25)
        tel.evaluation("val accuracy", 0.91)
        m = parse_metrics(http_get(url))
        assert m['sparsify_stage{sparsify_stage="prune"}'] == 1
        assert m['sparsify_stage{sparsify_stage="load"}'] == 0
        assert m["sparsify_progress_ratio{}"] == pytest.approx(0.4)
        assert m["sparsify_training_epoch{}"] == 1.5 and m["sparsify_training_step{}"] == 42
        assert m["sparsify_training_loss{}"] == 0.25 and m["sparsify_training_steps_total{}"] == 1
        assert m['sparsify_evaluation_metric{metric="val_accuracy"}'] == pytest.approx(0.91)
        assert (
            m[
                'sparsify_run_info{experiment="resnet-a",namespace="team-a",type="one-shot",'
                'use_case="image-classification"}'
            ]
            == 1
        )
        tel.stage("some-new-stage")  # unknown names stay in the bounded set
        assert parse_metrics(http_get(url))['sparsify_stage{sparsify_stage="other"}'] == 1
    finally:
        tel.finish(_report())
    assert tel.bound_port is None, "the /metrics server stops at the end"

    pushed = parse_metrics(http_get(f"{pushgateway}/metrics"))
    group = dict(experiment="resnet-a", instance="", job="sparsify-runner", namespace="team-a")
    assert pushed[mkey("sparsify_run_success", **group)] == 1
    assert pushed[mkey("sparsify_run_exit_code", **group)] == 0
    assert pushed[mkey("sparsify_model_latency_seconds", model="baseline", **group)] == pytest.approx(0.002)
    assert pushed[mkey("sparsify_model_size_bytes", model="optimized", **group)] == 1000
    assert pushed[mkey("sparsify_model_sparsity_ratio", model="optimized", **group)] == pytest.approx(0.6)
    assert pushed[mkey("sparsify_speedup_ratio", **group)] == 2.0
    assert pushed[mkey("sparsify_progress_ratio", **group)] == 1.0


def test_failure_is_pushed_with_exit_code(pushgateway):
    tel = PrometheusTelemetry(experiment="broken", namespace="team-b", pushgateway=pushgateway)
    tel.start()
    tel.stage("fetch")
    tel.finish(None, InputError("model 's3://b/k': no such object"), exit_code=2)
    pushed = parse_metrics(http_get(f"{pushgateway}/metrics"))
    group = dict(experiment="broken", instance="", job="sparsify-runner", namespace="team-b")
    assert pushed[mkey("sparsify_run_success", **group)] == 0
    assert pushed[mkey("sparsify_run_exit_code", **group)] == 2
    assert pushed[mkey("sparsify_run_failures_total", reason="InvalidInput", **group)] == 1
    assert pushed[mkey("sparsify_stage", sparsify_stage="failed", **group)] == 1


def test_unreachable_pushgateway_never_breaks_a_run():
    from rio_helpers import free_port

    tel = PrometheusTelemetry(experiment="x", pushgateway=f"http://127.0.0.1:{free_port()}")
    tel.finish(_report())  # logs a warning, does not raise


def test_from_environment(monkeypatch):
    monkeypatch.delenv("SPARSIFY_METRICS_PORT", raising=False)
    monkeypatch.delenv("SPARSIFY_PUSHGATEWAY_URL", raising=False)
    assert type(from_environment(None)) is Telemetry
    monkeypatch.setenv("SPARSIFY_PUSHGATEWAY_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SPARSIFY_EXPERIMENT_NAME", "from-env")
    tel = from_environment(None)
    assert isinstance(tel, PrometheusTelemetry) and tel.experiment == "from-env" and tel.port is None
