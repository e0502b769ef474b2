"""The pure fan-out: plan(sweep, children) and child_manifest(sweep, point); the shared objective."""

from __future__ import annotations

import copy
import uuid

import pytest
from sparsify_operator.jobs import KUEUE_QUEUE_LABEL
from sparsify_operator.sweep_models import LABEL_SWEEP
from sparsify_operator.sweep_reconcile import child_manifest, plan, points_of
from sparsify_runner.errors import InputError
from sparsify_runner.sweep import (
    SweepObjective,
    SweepPoint,
    choose_best,
    parse_levels,
    parse_structures,
    point_name,
)


def sweep(name="sw", levels=(0.2, 0.5, 0.8), parallelism=2, **over):
    spec = {
        "template": {
            "experiment": {
                "type": "one-shot",
                "useCase": "image-classification",
                "model": "s3://models/m.onnx",
                "data": "s3://data/calib/",
                "output": "s3://out/sw/",
            },
            "gpus": 0,
            "queueName": "team-a",
        },
        "optimLevels": list(levels),
        "parallelism": parallelism,
    }
    spec.update(over)
    return {
        "apiVersion": "sparsify.dev/v1alpha1",
        "kind": "SparsifySweep",
        "metadata": {"name": name, "namespace": "ml", "uid": str(uuid.uuid4()), "generation": 1},
        "spec": spec,
    }


def created(sw, manifest, phase=None, results=None, reason=None, message=None):
    """A child as the API server returns it, with the status the experiment reconciler wrote."""
    child = copy.deepcopy(manifest)
    child["metadata"]["uid"] = str(uuid.uuid4())
    st = {k: v for k, v in (("phase", phase), ("results", results), ("reason", reason),
                            ("message", message)) if v is not None}
    if st:
        child["status"] = st
    return child


def results(acc, lat, size, speedup, base_acc=0.9):
    return {"optimizedAccuracy": acc, "baselineAccuracy": base_acc, "optimizedLatencyMs": lat,
            "optimizedSizeBytes": size, "speedup": speedup, "modelUri": "s3://out/x/model.onnx",
            "reportUri": "s3://out/x/report.json", "fidelity": 0.99}


def test_names_are_dns_safe_stable_and_bounded():
    assert [p.name for p in points_of(sweep())] == ["sw-020-u", "sw-050-u", "sw-080-u"]
    long = point_name("x" * 80, 0.05, "channels")
    assert len(long) == 63 and long.endswith("-005-c") and long == point_name("x" * 80, 0.05, "channels")
    assert long != point_name("x" * 79 + "y", 0.05, "channels")


def test_child_manifest_owner_labels_queue_and_point_fields():
    sw = sweep()
    point = points_of(sw)[1]
    child = child_manifest(sw, point)
    meta = child["metadata"]
    assert meta["name"] == "sw-050-u" and meta["namespace"] == "ml"
    assert meta["labels"] == {LABEL_SWEEP: "sw", KUEUE_QUEUE_LABEL: "team-a"}
    (ref,) = meta["ownerReferences"]
    assert ref == {"apiVersion": "sparsify.dev/v1alpha1", "kind": "SparsifySweep", "name": "sw",
                   "uid": sw["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    exp = child["spec"]["experiment"]
    assert exp["optimLevel"] == 0.5 and exp["structure"] == "unstructured"
    assert exp["output"] == "s3://out/sw/sw-050-u" and exp["name"] == "sw-050-u"
    assert child["spec"]["queueName"] == "team-a", "children inherit the sweep's Kueue queue"
    assert sw["spec"]["template"]["experiment"]["output"] == "s3://out/sw/", "the template is not mutated"
    from sparsify_operator.jobs import validate_spec

    validate_spec(child)  # a normal, valid SparsifyExperiment


def test_parallelism_cap_and_idempotence():
    sw = sweep(parallelism=2)
    first = plan(sw, [])
    assert [m["metadata"]["name"] for m in first.create] == ["sw-020-u", "sw-050-u"]
    assert first.status["phase"] == "Pending" and first.status["summary"] == "0/3 succeeded, 3 to go"
    children = [created(sw, m) for m in first.create]
    # same inputs again (children Pending, then Running): nothing new while both slots are taken
    assert plan(sw, children).create == []
    running = [created(sw, m, phase="Running") for m in first.create]
    again = plan(sw, running)
    assert again.create == [] and again.status["phase"] == "Running"
    # one finishes -> exactly the third point is created
    running[0]["status"] = {"phase": "Succeeded", "results": results(0.9, 1.0, 100, 2.0)}
    nxt = plan(sw, running)
    assert [m["metadata"]["name"] for m in nxt.create] == ["sw-080-u"]
    assert plan(sw, [*running, created(sw, nxt.create[0])]).create == []


def test_all_succeed_best_and_pareto():
    sw = sweep(objective={"maximize": "speedup", "maxAccuracyDrop": 0.02})
    ms = [child_manifest(sw, p) for p in points_of(sw)]
    kids = [
        created(sw, ms[0], "Succeeded", results(0.90, 2.0, 300, 1.5)),
        created(sw, ms[1], "Succeeded", results(0.89, 1.0, 200, 3.0)),
        created(sw, ms[2], "Succeeded", results(0.80, 0.5, 100, 6.0)),  # fastest, but 10 points worse
    ]
    p = plan(sw, kids)
    st = p.status
    assert p.create == []
    assert st["phase"] == "Succeeded" and st["reason"] == "AllSucceeded" and st["summary"] == "3/3 succeeded"
    assert st["best"]["name"] == "sw-050-u" and "speedup 3.00x" in st["best"]["reason"]
    assert st["pareto"] == {"latency": ["sw-080-u", "sw-050-u", "sw-020-u"],
                            "size": ["sw-080-u", "sw-050-u", "sw-020-u"]}
    point = st["points"][1]
    assert point["latencyMs"] == 1.0 and point["sizeBytes"] == 200 and point["accuracy"] == 0.89
    assert point["reportUri"] == "s3://out/x/report.json"
    complete = next(c for c in st["conditions"] if c["type"] == "Complete")
    assert complete["status"] == "True"
    assert any(e[1] == "AllSucceeded" for e in p.events)
    # compression: the smallest within budget
    sw["spec"]["objective"] = {"maximize": "compression", "maxAccuracyDrop": 0.02}
    assert plan(sw, kids).status["best"]["name"] == "sw-050-u"
    sw["spec"]["objective"] = {"maximize": "compression", "maxAccuracyDrop": 0.2}
    assert plan(sw, kids).status["best"]["name"] == "sw-080-u"


def test_some_failed_still_succeeds_and_lists_the_failure():
    sw = sweep()
    ms = [child_manifest(sw, p) for p in points_of(sw)]
    kids = [
        created(sw, ms[0], "Succeeded", results(0.9, 2.0, 300, 1.5)),
        created(sw, ms[1], "Failed", reason="InvalidInput", message="model has dynamic shapes"),
        created(sw, ms[2], "Succeeded", results(0.9, 1.0, 200, 3.0)),
    ]
    st = plan(sw, kids).status
    assert st["phase"] == "Succeeded" and st["reason"] == "SomeFailed"
    assert st["summary"] == "2/3 succeeded, 1 failed (sw-050-u)"
    failed = st["points"][1]
    assert failed["phase"] == "Failed" and failed["message"] == "InvalidInput: model has dynamic shapes"
    assert st["best"]["name"] == "sw-080-u"
    assert "sw-050-u" not in st["pareto"]["latency"]


def test_all_failed_fails_the_sweep():
    sw = sweep()
    kids = [created(sw, child_manifest(sw, p), "Failed", reason="InternalError") for p in points_of(sw)]
    p = plan(sw, kids)
    assert p.status["phase"] == "Failed" and p.status["reason"] == "AllFailed"
    assert p.status["best"] is None and p.create == []
    assert any(e[0] == "Warning" and e[1] == "AllFailed" for e in p.events)


def test_failed_points_free_slots_and_finished_results_survive_a_deleted_child():
    sw = sweep(parallelism=1)
    ms = [child_manifest(sw, p) for p in points_of(sw)]
    one = plan(sw, [created(sw, ms[0], "Failed", reason="InternalError")])
    assert [m["metadata"]["name"] for m in one.create] == ["sw-050-u"]
    # the first child was deleted after finishing: its recorded result stays, it is not re-created
    sw["status"] = one.status
    later = plan(sw, [created(sw, ms[1], "Running")])
    assert later.create == [] and later.status["points"][0]["phase"] == "Failed"


def test_name_clash_with_a_foreign_experiment_is_reported_not_duplicated():
    sw = sweep(levels=(0.2,), parallelism=1)
    foreign = created(sweep(), child_manifest(sweep(), points_of(sweep())[0]))  # other owner uid
    p = plan(sw, [foreign])
    assert p.create == [] and p.status["phase"] == "Failed"
    assert "not owned by this sweep" in p.status["points"][0]["message"]


def test_invalid_spec_fails_with_one_line():
    sw = sweep(levels=(0.2, 0.2))
    p = plan(sw, [])
    assert p.create == [] and p.status["phase"] == "Failed" and p.status["reason"] == "InvalidSpec"
    assert p.status["message"].startswith("invalid field 'spec.optimLevels'")
    sw = sweep(parallelism=0)
    assert "spec.parallelism" in plan(sw, []).status["message"]


def test_structures_default_to_the_template_and_multiply_the_grid():
    sw = sweep(levels=(0.3, 0.6), structures=["unstructured", "channels"])
    assert [p.name for p in points_of(sw)] == ["sw-030-u", "sw-060-u", "sw-030-c", "sw-060-c"]
    sw = sweep(levels=(0.3,))
    sw["spec"]["template"]["experiment"]["structure"] = "channels"
    assert [p.name for p in points_of(sw)] == ["sw-030-c"]


def test_objective_uses_fidelity_without_labels_and_min_fidelity():
    pts = [
        SweepPoint(name="a", optim_level=0.2, structure="unstructured", phase="Succeeded",
                   fidelity=0.995, speedup=1.2, latency_ms=1.0, size_bytes=10),
        SweepPoint(name="b", optim_level=0.5, structure="unstructured", phase="Succeeded",
                   fidelity=0.95, speedup=2.0, latency_ms=0.5, size_bytes=5),
    ]
    assert choose_best(pts, SweepObjective()).name == "a"
    assert choose_best(pts, SweepObjective(max_accuracy_drop=0.1)).name == "b"
    none = choose_best(pts, SweepObjective(max_accuracy_drop=0.1, min_fidelity=0.999))
    assert none.name is None and "no succeeded point meets the budget" in none.reason


@pytest.mark.parametrize(
    ("text", "msg"),
    [("", "is empty"), ("0.2,abc", "not a number"), ("0.2,1.2", "out of range"), ("0.2,0.201", "same point")],
)
def test_bad_levels_are_one_line(text, msg):
    with pytest.raises(InputError, match=msg):
        parse_levels(text)


def test_bad_structures_are_one_line():
    with pytest.raises(InputError, match="unknown structure 'rows'"):
        parse_structures("unstructured,rows")
    assert parse_structures("channels, unstructured,channels") == ["channels", "unstructured"]
