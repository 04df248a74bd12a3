"""The ``ascendra`` command: a real (small) sweep and every bad input we can think of."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ascendra.cli import main


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ascendra.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_sim_writes_table_json_and_plot(tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    p = run(["sim", "--preset", "anchor-h100", "--qps", "8,60", "--requests", "400",
             "--json", str(out), "--plot", str(png), "--jobs", "1", "--quiet"])
    assert p.returncode == 0, p.stderr
    assert "vllm" in p.stdout and "sarathi" in p.stdout and "goodput" in p.stdout
    report = json.loads(out.read_text())
    assert report["preset"] == "anchor-h100"
    for name in ("vllm", "sarathi"):
        s = report["systems"][name]
        assert set(s) >= {"goodput_qps", "curve", "ttft_p99", "tbt_mean_p99"}
        assert isinstance(s["goodput_qps"], float) and 8 <= s["goodput_qps"] <= 60
        assert all(len(pt) == 2 for pt in s["curve"])
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_version_is_the_package_version(capsys):
    from ascendra import __version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"ascendra {__version__}"


def test_list_presets(capsys):
    assert main(["sim", "--list"]) == 0
    names = capsys.readouterr().out
    assert all(n in names for n in ("paper-sharegpt", "paper-longbench", "anchor-h100"))


# A router command line that is valid up to the flag each case adds.
ROUTER = ["router", "--model-name", "m", "--tokenizer", "t", "--max-model-len", "64",
          "--instance", "http://127.0.0.1:1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sim", "--preset", "nope"], "unknown preset 'nope'"),
        (["sim", "--preset", "anchor-h100", "--qps", "-5"], "rates must be positive"),
        (["sim", "--preset", "anchor-h100", "--qps", "1,x"], "comma-separated numbers"),
        (["sim", "--preset", "anchor-h100", "--requests", "0"], "--requests must be positive"),
        (["sim", "--preset", "anchor-h100", "--gpu", "tpu"], "unknown GPU"),
        (["sim", "--preset", "anchor-h100", "--hp", "2"], "HP < instances"),
        (["sim", "--preset", "anchor-h100", "--systems", "foo"], "unknown system 'foo'"),
        (["sim", "--preset", "anchor-h100", "--tbt", "-1"], "--tbt must be positive"),
        (["sim"], "--preset NAME is required"),
        (["sim", "--wat"], "unrecognized arguments"),
        (["frobnicate"], "invalid choice"),
        (["profile", "--model", "m", "--out", "p.csv", "--url", "http://127.0.0.1:1"],
         "cannot reach the engine at http://127.0.0.1:1"),
        (["profile", "--model", "m", "--out", "p.csv", "--decodes", "1,x"],
         "--decodes needs comma-separated integers"),
        (["profile", "--model", "m", "--out", "p.csv", "--prefill", "0"], "must be positive"),
        (["profile", "--model", "m", "--out", "p.csv", "--prefill", "4096"],
         "does not fit --max-model-len 2048"),
        (["profile", "--model", "m", "--out", "/no/such/dir/p.csv"], "is not a directory"),
        (["bench", "--url", "http://127.0.0.1:1/v1", "--model", "m", "--qps", "1"],
         "cannot reach the server at http://127.0.0.1:1/v1"),
        # output files are checked before the work starts, not after a whole sweep
        (["sim", "--preset", "anchor-h100", "--json", "/no/such/dir/r.json"],
         "cannot write /no/such/dir/r.json: /no/such/dir is not a directory"),
        (["sim", "--preset", "anchor-h100", "--plot", "/no/such/dir/r.png"], "is not a directory"),
        (["sim", "--preset", "anchor-h100", "--json", "/tmp"], "/tmp is a directory"),
        (["sim", "--preset", "anchor-h100", "--observations", "/no/such/dir/o.jsonl"],
         "is not a directory"),
        (["bench", "--model", "m", "--qps", "1", "--json", "/no/such/dir/b.json"],
         "is not a directory"),
        (["bench", "--model", "m", "--qps", "1", "--plot", "/no/such/dir/b.png"],
         "is not a directory"),
        (["bench", "--model", "m", "--qps", "1", "--lead-seconds", "-1"],
         "--lead-seconds must be 0 or more, got -1.0"),
        (["bench", "--model", "m", "--qps", "1", "--lead-seconds", "nan"],
         "--lead-seconds must be 0 or more, got nan"),
        (["predictor", "train", "--model", "m", "--out", "/no/such/dir/p.json"],
         "is not a directory"),
        ([*ROUTER, "--observations", "/no/such/dir/o.jsonl"], "is not a directory"),
        (["profile", "--model", "m", "--out", "p.csv", "--mixed-prefill", "512"],
         "mixed samples need both prefill lengths and decode batches"),
        (["profile", "--model", "m", "--out", "p.csv", "--mixed-prefill", "512",
          "--mixed-decodes", "8", "--mixed-context", "2048"], "does not fit --max-model-len"),
        (["sim", "--preset", "anchor-h100", "--queue-limit", "0"],
         "--queue-limit: '0' is out of range [1, 1000000]"),
        (["sim", "--preset", "anchor-h100", "--order", "lifo"],
         "--order: 'lifo' is not one of deadline, fcfs, shortest"),
        (["sim", "--preset", "anchor-h100", "--hold-queue", "maybe"],
         "--hold-queue: 'maybe' is not true or false"),
        (["sim", "--preset", "anchor-h100", "--relegation-margin-seconds", "-1"],
         "--relegation-margin-seconds: '-1' is out of range [0.0, 60.0]"),
        (["sim", "--preset", "anchor-h100", "--tbt-kind", "median"],
         "--tbt-kind must be one of mean, p99, max"),
        ([*ROUTER, "--queue-timeout-seconds", "0"], "--queue-timeout-seconds: '0' is out of range"),
        ([*ROUTER, "--system", "ascendra-paper"], "runs in the simulator only"),
        ([*ROUTER, "--system", "nope"], "unknown system 'nope'"),
        ([*ROUTER, "--progress-timeout", "0"],
         "--progress-timeout must be a number of seconds > 0, got 0.0"),
        ([*ROUTER, "--progress-timeout", "nan"],
         "--progress-timeout must be a number of seconds > 0, got nan"),
        (["runtime", "--cpu", "--model", "/", "--progress-timeout", "-1"],
         "--progress-timeout must be a number of seconds > 0, got -1.0"),
        (["up", "--system", "vllm-v0"], "--system must be one of ascendra, vllm"),
        (["up", "--hp", "2"], "--hp must be within 0..1"),
        (["up", "--system", "vllm", "--hp", "1"], "--hp applies to ascendra only"),
        (["operator", "--allow-prometheus-url", "http://prometheus:9090/api"],
         "--allow-prometheus-url must be an origin"),
        (["operator", "--allow-prometheus-url", "ftp://prometheus"],
         "--allow-prometheus-url must be an origin"),
        (["operator", "--allow-prometheus-url", "http://p:port"],
         "--allow-prometheus-url must be an origin"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_bad_policy_in_the_router_config_names_the_field(tmp_path, capsys):
    cfg = tmp_path / "router.json"
    base = {"model_name": "m", "tokenizer": str(tmp_path), "max_model_len": 64}
    for policy, message in (({"queueLimit": -3}, "policy.queueLimit: -3 is out of range"),
                            ({"overload": "drop"}, "policy.overload: 'drop' is not one of"),
                            ({"holdQueue": 1}, "policy.holdQueue: 1 is not true or false")):
        cfg.write_text(json.dumps({**base, "policy": policy}))
        assert main(["router", "--config", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    cfg.write_text(json.dumps({**base, "slo": {"tbtKind": "median"}}))
    assert main(["router", "--config", str(cfg)]) == 2
    assert "slo.tbtKind: 'median' is not one of" in capsys.readouterr().err
    cfg.write_text(json.dumps({**base, "system": "vllm-v0"}))
    assert main(["router", "--config", str(cfg)]) == 2
    assert "runs in the simulator only" in capsys.readouterr().err


def test_bad_files_are_one_line_and_exit_2(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,prompt_tokens,output_tokens\n0,10,5\n1,abc,5\n")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"hidden_size": 64}))
    for args, message in (
        (["--trace", str(trace)], "line 3: unreadable"),
        (["--trace", str(tmp_path / "none.csv")], "trace not found"),
        (["--model", str(cfg)], "lacks fields"),
        (["--model", "no-such-model"], "unknown built-in model"),
    ):
        assert main(["sim", "--preset", "anchor-h100", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
