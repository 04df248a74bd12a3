"""The one policy description: parsing, ranges, and one name per knob everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ascendra.core.policy import (
    FIELDS,
    Dispatch,
    Order,
    Overload,
    Policy,
    PolicyError,
    parse_policy,
)
from ascendra.core.systems import SYSTEMS, system

ROOT = Path(__file__).resolve().parents[1]


def test_a_policy_block_parses_into_the_dataclass():
    p = parse_policy({"order": "fcfs", "overload": "reject", "queueLimit": 10,
                      "queueTimeoutSeconds": "2.5", "holdQueue": "false", "dispatch":
                      "round-robin", "migration": True})
    assert (p.order, p.overload, p.queue_limit, p.queue_timeout, p.hold_queue, p.dispatch,
            p.migration) == (Order.FCFS, Overload.REJECT, 10, 2.5, False,
                             Dispatch.ROUND_ROBIN, True)
    assert parse_policy({}) == Policy()
    assert parse_policy(Policy(queue_limit=7).as_mapping()) == Policy(queue_limit=7)


@pytest.mark.parametrize(("block", "needle"), [
    ({"queueLimit": 0}, "policy.queueLimit: 0 is out of range"),
    ({"queueLimit": 2.5}, "policy.queueLimit: 2.5 is not an integer"),
    ({"queueLimit": True}, "policy.queueLimit: True is not an integer"),
    ({"queueTimeoutSeconds": "soon"}, "policy.queueTimeoutSeconds: 'soon' is not a number"),
    ({"relegationMarginSeconds": float("nan")}, "relegationMarginSeconds: nan is out of range"),
    ({"kvReserveFraction": 0.95}, "policy.kvReserveFraction: 0.95 is out of range"),
    ({"order": "random"}, "policy.order: 'random' is not one of deadline, fcfs, shortest"),
    ({"holdQueue": "yes"}, "policy.holdQueue: 'yes' is not true or false"),
    ({"queue_limit": 3}, "policy.queue_limit: unknown policy field"),
])
def test_a_bad_value_is_one_error_naming_the_field(block, needle):
    with pytest.raises(PolicyError) as e:
        parse_policy(block)
    assert needle in str(e.value)


def test_flags_are_the_keys_in_kebab_case():
    flags = {f.key: f.flag for f in FIELDS}
    assert flags["queueLimit"] == "--queue-limit"
    assert flags["relegationMarginSeconds"] == "--relegation-margin-seconds"
    assert len(set(flags.values())) == len(FIELDS)


def test_the_crd_policy_block_is_the_policy_table():
    """The CRD's schema and FIELDS name the same knobs with the same types, ranges and enums,
    so the API server rejects exactly what the parser would."""
    crd = yaml.safe_load((ROOT / "crds" / "ascendraservices.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]["policy"]["properties"]
    assert set(props) == {f.key for f in FIELDS}
    default = Policy().as_mapping()
    for f in FIELDS:
        schema = props[f.key]
        if issubclass(f.kind, Order | Overload | Dispatch):
            assert schema["type"] == "string"
            assert schema["enum"] == [m.value for m in f.kind]
        elif f.kind is bool:
            assert schema["type"] == "boolean"
        else:
            assert schema["type"] == ("integer" if f.kind is int else "number"), f.key
            assert (schema["minimum"], schema["maximum"]) == (f.low, f.high), f.key
        assert "default" not in schema, f"{f.key}: the system's policy is the default"
        assert f.key in default
    assert spec["properties"]["system"]["enum"] == [n for n, s in SYSTEMS.items()
                                                    if s.deployable]
    chart = (ROOT / "charts" / "ascendra" / "crds" / "ascendraservices.yaml").read_text()
    assert chart == (ROOT / "crds" / "ascendraservices.yaml").read_text()


def test_systems_name_one_engine_and_one_policy_everywhere():
    from ascendra.runtime.engine_args import SYSTEM_ARGS

    assert SYSTEM_ARGS == {"ascendra": ("--scheduling-policy", "priority"), "vllm": (),
                           "vllm-lb": (), "vllm-shed": (),
                           "sarathi": ("--max-num-batched-tokens", "512", "--max-num-seqs",
                                       "128")}
    assert not system("ascendra-paper").deployable and not system("vllm-v0").deployable
    # The baselines run as a user runs them: no router queue but vllm-shed's, no moves.
    for name in ("vllm", "vllm-lb", "sarathi", "vllm-v0"):
        p = system(name).policy
        assert not (p.hold_queue or p.offload or p.migration), name
    shed = system("vllm-shed").policy
    assert shed.hold_queue and shed.order is Order.FCFS and not shed.offload
    assert system("vllm-lb").policy.dispatch is Dispatch.LEAST_DELAY
    assert system("ascendra").hp_instances == 0  # one engine per GPU by default
