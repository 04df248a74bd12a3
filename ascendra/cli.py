"""The ``ascendra`` command. Each subcommand parses its arguments and hands off to a module;
user errors end as one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ascendra import __version__
from ascendra.errors import AscendraError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise AscendraError(f"{message} (see '{self.prog} --help')")


def _output_file(text: str) -> Path:
    """A file the command writes when its work is done: its directory must exist before the
    work starts, not be found missing after a whole sweep has run."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: {path.parent} is not a directory")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    return path


def _add_policy_flags(parser: argparse.ArgumentParser, applies: str) -> None:
    """One flag per policy field (ascendra.core.policy.FIELDS), as the config file and the
    CRD name them, in kebab case."""
    from ascendra.core.policy import FIELDS

    group = parser.add_argument_group(f"policy ({applies}; camelCase in config files and "
                                      "the CRD)")
    for f in FIELDS:
        group.add_argument(f.flag, dest=f"policy_{f.name}", metavar="VALUE", help=f.help)


def _policy_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The policy flags given, by camelCase key, each checked here so that an error names the
    flag."""
    from ascendra.core.policy import FIELDS, parse_value

    out: dict[str, object] = {}
    for f in FIELDS:
        raw = getattr(args, f"policy_{f.name}", None)
        if raw is not None:
            out[f.key] = parse_value(f, raw, "")
    return out


def _tbt_kind(text: str):  # type: ignore[no-untyped-def]
    from ascendra.core.request import TbtKind

    try:
        return TbtKind(text)
    except ValueError:
        known = ", ".join(k.value for k in TbtKind)
        raise AscendraError(f"--tbt-kind must be one of {known}, got {text!r}") from None


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise AscendraError(f"--qps wants comma-separated numbers, got {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise AscendraError(f"--qps rates must be positive, got {text!r}")
    return rates


def _cmd_sim(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from ascendra.core.request import Slo
    from ascendra.core.systems import system
    from ascendra.experiments import report as rep
    from ascendra.experiments.presets import PRESETS, preset
    from ascendra.experiments.sweep import offload_predictor, run_sweep
    from ascendra.perf import latency_model
    from ascendra.predict.observations import write_observations
    from ascendra.workloads.spec import TraceWorkload

    if args.list:
        for p in PRESETS.values():
            print(f"{p.name:<16} {p.description}")
        return 0
    if not args.preset:
        raise AscendraError("sim: --preset NAME is required (see --list)")
    p = preset(args.preset)
    for flag, value in (("--requests", args.requests), ("--instances", args.instances),
                        ("--max-seqs", args.max_seqs), ("--ttft", args.ttft), ("--tbt", args.tbt)):
        if value is not None and value <= 0:
            raise AscendraError(f"{flag} must be positive, got {value}")
    policy = _policy_overrides(args)
    overrides: dict[str, object] = {
        "requests": args.requests, "seed": args.seed,
        "qps": _rates(args.qps) if args.qps else None,
        "instances": args.instances, "hp_instances": args.hp, "max_seqs": args.max_seqs,
        "gpu": args.gpu, "model": args.model, "profile": args.profile,
        "predictor": args.predictor, "observe": args.observations is not None,
        "policy": tuple({**dict(p.policy), **policy}.items()) if policy else None,
    }
    if args.duration is not None:
        if args.duration < 0:
            raise AscendraError(f"--duration must be ≥ 0, got {args.duration}")
        overrides["duration_s"] = args.duration or None
    if args.trace:
        workload = TraceWorkload(Path(args.trace), name=Path(args.trace).stem)
        workload.all_requests()  # a malformed trace fails here, before any simulation
        overrides["workload"] = workload
    if args.ttft is not None or args.tbt is not None or args.tbt_kind is not None:
        overrides["slo"] = Slo(args.ttft or p.slo.ttft, args.tbt or p.slo.tbt,
                               _tbt_kind(args.tbt_kind) if args.tbt_kind else p.slo.tbt_kind)
    p = p.with_overrides(**overrides)
    if (args.gpu or args.model) and not args.profile:
        p = replace(p, profile=None)  # the shipped profile is one model on one GPU
    # An unknown GPU, a bad model config, a bad profile or an unfit predictor fails here, once.
    offload_predictor(p, latency_model(p.model, p.gpu, p.profile))
    if p.instances <= 0 or not 0 <= (p.hp_instances or 0) < p.instances:
        raise AscendraError(
            f"need ≥ 1 instance and 0 ≤ HP < instances, got {p.instances} and {p.hp_instances}")
    systems = args.systems.split(",") if args.systems else None
    for name in systems or ():
        system(name)  # an unknown name fails here, with the known ones

    def bar(total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=f"{p.name} {desc}", unit="run", disable=args.quiet,
                    file=sys.stderr, leave=False)

    sweeps = run_sweep(p, systems, jobs=args.jobs, progress=bar)
    report = rep.to_json(p, sweeps)
    print(rep.table(report))
    if args.observations is not None:
        seen = [o for sw in sweeps.values() for pt in sw.points.values() for o in pt.observations]
        args.observations.unlink(missing_ok=True)
        write_observations(args.observations, seen)
        print(f"ascendra: observe-only (no offloads): {len(seen)} observations written to "
              f"{args.observations}")
    if args.json:
        rep.write_json(report, args.json)
    if args.plot:
        rep.plot(report, args.plot)
    return 0


def _cmd_runtime(args: argparse.Namespace) -> int:
    import uvicorn

    from ascendra.runtime.agent import ROLES, Agent, AgentConfig
    from ascendra.runtime.engine_args import CPU_DEFAULTS, SYSTEM_ARGS, EngineLaunch

    if args.role not in ROLES:
        raise AscendraError(f"--role must be one of {', '.join(ROLES)}, got {args.role!r}")
    if args.system not in SYSTEM_ARGS:
        raise AscendraError(f"--system must be one of {', '.join(SYSTEM_ARGS)} (the systems "
                            f"that run on vLLM), got {args.system!r}")
    if not Path(args.model).exists():
        raise AscendraError(f"model path not found: {args.model}")
    launch = EngineLaunch(model=args.model, port=args.port, system=args.system, host=args.host,
                          served_model_name=args.served_model_name,
                          max_model_len=args.max_model_len, extra=tuple(args.engine_args),
                          defaults=CPU_DEFAULTS if args.cpu else ())
    _check_progress_timeout(args.progress_timeout)
    agent = Agent(AgentConfig(launch=launch, agent_port=args.agent_port, role=args.role,
                              role_file=Path(args.role_file) if args.role_file else None,
                              progress_timeout=args.progress_timeout,
                              admin_token=os.environ.get("ASCENDRA_ADMIN_TOKEN") or None))
    uvicorn.run(agent.app(), host=args.agent_host, port=args.agent_port, log_level="warning")
    if agent.engine_exit is not None:
        print(f"ascendra runtime: stopped because vLLM exited with status {agent.engine_exit}",
              file=sys.stderr)
        return 1
    return 0


def _check_progress_timeout(seconds: float) -> None:
    if not 0 < seconds < math.inf:
        raise AscendraError(f"--progress-timeout must be a number of seconds > 0, got {seconds}")


def _cmd_router(args: argparse.Namespace) -> int:
    from ascendra.core.request import Slo
    from ascendra.core.systems import system
    from ascendra.router.app import Router, RouterSettings
    from ascendra.router.auth import Credentials
    from ascendra.router.instances import InstanceSpec
    from ascendra.router.server import serve

    policy = _policy_overrides(args)
    if args.config:
        from ascendra.router.config import load_settings

        if policy or args.system:
            raise AscendraError("router: --config carries the system and the policy; give "
                                "them there, not as flags")
        settings = load_settings(args.config)
    else:
        if not (args.instance and args.model_name and args.tokenizer and args.max_model_len):
            raise AscendraError("router: give --config, or --model-name, --tokenizer, "
                                "--max-model-len and at least one --instance")
        try:
            specs = [InstanceSpec.parse(x) for x in args.instance]
        except ValueError as e:
            raise AscendraError(str(e)) from None
        name = args.system or "ascendra"
        spec = system(name)
        if not spec.deployable:
            raise AscendraError(f"--system {name!r} runs in the simulator only")
        settings = RouterSettings(
            model_name=args.model_name, tokenizer=args.tokenizer,
            max_model_len=args.max_model_len, instances=specs,
            slo=Slo(args.ttft, args.tbt, _tbt_kind(args.tbt_kind)), system=name,
            policy=spec.policy.with_values(policy))
    _check_progress_timeout(args.progress_timeout)
    settings.progress_timeout = args.progress_timeout
    if args.observations:
        settings.observations = args.observations
    if args.predictor:
        settings.predictor = Path(args.predictor)  # refused at start-up if unfit, not fatal
    if args.refit_every < 0:
        raise AscendraError("--refit-every must be ≥ 0")
    settings.refit_every = args.refit_every or settings.refit_every
    if args.predictor_dir:
        if not Path(args.predictor_dir).is_dir():
            raise AscendraError(f"--predictor-dir {args.predictor_dir} is not a directory")
        settings.predictor_dir = Path(args.predictor_dir)
    settings.credentials = Credentials.from_env(os.environ)
    try:
        router = Router(settings)
    except OSError as e:
        raise AscendraError(f"cannot load the tokenizer from {args.tokenizer}: {e}") from None
    serve(router.app(), host=args.host, port=args.port)
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from ascendra.runtime.engine_args import SYSTEM_ARGS
    from ascendra.runtime.local_stack import StackConfig, run

    if args.system not in SYSTEM_ARGS:
        raise AscendraError(f"--system must be one of {', '.join(SYSTEM_ARGS)}, got "
                            f"{args.system!r}")
    if args.model and not Path(args.model, "config.json").is_file():
        raise AscendraError(f"--model {args.model}: no config.json there")
    engine_args = ["--max-num-seqs", str(args.max_num_seqs)] if args.max_num_seqs else []
    cfg = StackConfig(model=Path(args.model) if args.model else None,
                      instances=args.instances, hp=args.hp,
                      system=args.system, port=args.port, base_port=args.base_port,
                      ttft=args.ttft, tbt=args.tbt, engine_args=engine_args,
                      max_model_len=args.max_model_len, log_dir=Path(args.log_dir))
    return run(cfg)


def _origin(text: str) -> str:
    """An --allow-prometheus-url value: scheme://host[:port], nothing after it."""
    import urllib.parse

    parts = urllib.parse.urlsplit(text)
    try:
        _ = parts.port  # raises on a port that is not a number
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or \
            parts.path not in ("", "/") or parts.query or parts.fragment:
        raise AscendraError(f"--allow-prometheus-url must be an origin such as "
                            f"http://prometheus.monitoring.svc:9090, got {text!r}")
    return text


def _cmd_operator(args: argparse.Namespace) -> int:
    import logging

    import kopf

    origins = tuple(_origin(o) for o in args.allow_prometheus_url or ())

    # Importing the module registers its handlers with kopf.
    from ascendra.operator.handlers import OperatorOptions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    kopf.run(standalone=True, clusterwide=not args.namespace, namespaces=args.namespace or (),
             liveness_endpoint=args.liveness,
             memo=kopf.Memo(options=OperatorOptions(
                 monitoring_objects=args.monitoring_objects,
                 prometheus_origins=origins)))
    return 0


def _bench_workload(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ascendra.workloads.lengths import LENGTHS
    from ascendra.workloads.spec import SyntheticWorkload, TraceWorkload, builtin_trace

    if args.length_scale <= 0:
        raise AscendraError(f"--length-scale must be positive, got {args.length_scale}")
    name = args.workload
    if name.startswith("trace:") or name in ("azure-conv", "azure-code"):
        path = Path(name[6:]) if name.startswith("trace:") else \
            builtin_trace(f"azure-llm-2023/{name.split('-')[1]}")
        trace = TraceWorkload(path, max_total=args.max_model_len, name=path.stem)
        trace.all_requests()  # a malformed trace fails here
        if args.length_scale != 1:
            raise AscendraError("--length-scale applies to synthetic workloads only")
        return trace
    if name not in LENGTHS:
        raise AscendraError(f"unknown workload {name!r} (known: {', '.join(LENGTHS)}, "
                            "azure-conv, azure-code, trace:PATH)")
    lengths = LENGTHS[name]
    if args.length_scale != 1:
        lengths = lengths.scaled(args.length_scale)
    return SyntheticWorkload(lengths, process=args.arrivals, cv=args.cv)


def _cmd_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ascendra import loadgen
    from ascendra.core.request import Slo

    if args.requests <= 0:
        raise AscendraError(f"--requests must be positive, got {args.requests}")
    if args.prompt not in ("tokens", "text"):
        raise AscendraError("--prompt must be tokens or text")
    if not 0 <= args.lead_seconds < math.inf:
        raise AscendraError(f"--lead-seconds must be 0 or more, got {args.lead_seconds}")
    cfg = loadgen.BenchConfig(
        url=args.url.rstrip("/"), model=args.model, workload=_bench_workload(args),
        rates=_rates(args.qps), requests=args.requests,
        slo=Slo(args.ttft, args.tbt, _tbt_kind(args.tbt_kind)), prompt=args.prompt,
        vocab=args.vocab, seed=args.seed, warmup=args.warmup, lead_seconds=args.lead_seconds,
        criticality=args.criticality)

    def bar(total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="req", disable=args.quiet, file=sys.stderr,
                    leave=False)

    results = loadgen.run_bench(cfg, progress=bar)
    rep = loadgen.report(cfg, results)
    print(loadgen.table(rep))
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1) + "\n")
    if args.plot:
        loadgen.plot({args.label or args.model: rep}, args.plot, title=rep["workload"])
    return 0


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise AscendraError(f"{flag} needs comma-separated integers, got {text!r}") from None


def _cmd_profile(args: argparse.Namespace) -> int:
    from ascendra.perf.profiler import ProfileGrid, profile_engine

    grid = ProfileGrid(prefill_tokens=_ints(args.prefill, "--prefill"),
                       decode_batches=_ints(args.decodes, "--decodes"),
                       decode_contexts=_ints(args.contexts, "--contexts"),
                       decode_tokens=args.decode_tokens,
                       mixed_prefill=_ints(args.mixed_prefill, "--mixed-prefill")
                       if args.mixed_prefill else (),
                       mixed_decodes=_ints(args.mixed_decodes, "--mixed-decodes")
                       if args.mixed_decodes else (), mixed_context=args.mixed_context,
                       samples=args.samples,
                       repeat=args.repeat, vocab=args.vocab)
    say = (lambda _: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    rows = profile_engine(args.url.rstrip("/").removesuffix("/v1"), args.model, grid,
                          Path(args.out), args.max_model_len, say)
    print(f"ascendra: {len(rows)} profile rows written to {args.out}")
    return 0


def _cmd_predictor(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ascendra.perf import latency_model
    from ascendra.perf.hardware import ModelShape
    from ascendra.perf.profile import load_profile
    from ascendra.predict.evaluate import (
        iteration_cv,
        iteration_holdout,
        split_blocks,
        ttft_eval,
    )
    from ascendra.predict.learned import (
        IterationModel,
        LearnedPredictor,
        TtftModel,
        load_predictor,
        save_predictor,
        trained_quantiles,
    )
    from ascendra.predict.observations import read_observations

    def shape() -> ModelShape:
        c = args.model_config
        return ModelShape.load(c) if Path(c).exists() else ModelShape.builtin(c)

    def observations(part: int) -> list:
        obs = [o for f in args.observations or [] for o in read_observations(f)]
        return list(split_blocks(obs)[part]) if args.split else obs

    if args.action == "train":
        if not args.observations:
            raise AscendraError("predictor train: give --observations (JSONL from the router's "
                                "--observations or the simulator)")
        q = args.quantile or 0.9
        ttft = TtftModel.fit(observations(0), quantiles=trained_quantiles(q))
        iteration = IterationModel.fit(load_profile(args.profile), shape(), args.gpu) \
            if args.profile else None
        sources = [*(args.observations or []), *([args.profile] if args.profile else [])]
        if not args.out:
            raise AscendraError("predictor train: give --out")
        save_predictor(args.out, LearnedPredictor(
            args.model, ttft, latency_model(), iteration, args.quantile or 0.9,
            source=", ".join(Path(s).name for s in sources)))
        print(f"ascendra: predictor for {args.model!r} ({ttft.rows} observations"
              f"{', iteration model' if iteration else ''}) written to {args.out}")
        return 0
    report: dict[str, object] = {}
    if args.test_profile and not args.profile:
        raise AscendraError("predictor eval: --test-profile needs --profile to train on")
    if args.profile:
        rows = load_profile(args.profile)
        report["iteration"] = asdict(
            iteration_holdout(rows, load_profile(args.test_profile), shape(), args.gpu)
            if args.test_profile else iteration_cv(rows, shape(), args.gpu))
    if args.observations:
        if not args.predictor:
            raise AscendraError("predictor eval: --observations needs --predictor")
        pred = load_predictor(args.predictor, args.model, latency_model(), args.quantile)
        report["ttft"] = asdict(ttft_eval(pred.ttft, observations(1), pred.quantile,
                                          args.margin))
    if not report:
        raise AscendraError("predictor eval: give --profile and/or --observations")
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ascendra", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ascendra {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    pd = sub.add_parser("predictor", help="train or evaluate the learned deadline predictor")
    pd.add_argument("action", choices=("train", "eval"))
    pd.add_argument("--model", required=True, help="the served model name it is for")
    pd.add_argument("--observations", action="append",
                    help="observations JSONL (repeatable): the router's --observations output")
    pd.add_argument("--split", action="store_true", help="train on 4 of every 5 blocks of "
                    "observations, evaluate on the fifth (the same split both ways)")
    pd.add_argument("--profile", help="profile CSV (ascendra profile) for the step-time model")
    pd.add_argument("--test-profile", help="eval: score the step-time model fitted to --profile "
                    "on this other run of the same engine (default: cross-validate --profile)")
    pd.add_argument("--model-config", default="llama-3.1-8b",
                    help="built-in model name or config.json path, for the roofline")
    pd.add_argument("--gpu", default="h100", help="GPU spec for the roofline")
    pd.add_argument("--quantile", type=float, help="TTFT quantile the offload rule bounds "
                    "with (train default 0.9; eval default: the file's)")
    pd.add_argument("--predictor", help="predictor file to evaluate")
    pd.add_argument("--out", type=_output_file, help="predictor file to write (train)")
    pd.add_argument("--margin", type=float, default=0.7, help="the paper rule's margin, s")
    pd.add_argument("--json", type=_output_file, help="also write the report here (eval)")
    pd.set_defaults(func=_cmd_predictor)

    sim = sub.add_parser("sim", help="simulate a preset's QPS sweep and report goodput")
    sim.add_argument("--preset", help="experiment preset (see --list)")
    sim.add_argument("--list", action="store_true", help="list presets and exit")
    sim.add_argument("--json", type=_output_file, help="write the report as JSON here")
    sim.add_argument("--plot", type=_output_file, help="write attainment vs QPS as PNG here")
    sim.add_argument("--systems", help="comma-separated subset of the preset's systems")
    sim.add_argument("--profile", help="measured profile CSV (ascendra profile) to fit the "
                     "latency model to, instead of the calibrated constants")
    sim.add_argument("--predictor", help="learned predictor file (ascendra predictor train, "
                     "for --model's name): the offload rule bounds with it instead of the "
                     "preset's margin")
    sim.add_argument("--observations", type=_output_file,
                     help="observe only: no offloads, and every queued "
                     "request's snapshots and time to first token (JSONL, ascendra predictor "
                     "train's input) are written here")
    sim.add_argument("--qps", help="comma-separated request rates to start the sweep with")
    sim.add_argument("--requests", type=int, help="requests per rate (at least)")
    sim.add_argument("--duration", type=float,
                     help="arrivals span at least this many seconds (0: exactly --requests)")
    sim.add_argument("--instances", type=int, help="instances in the cluster")
    sim.add_argument("--hp", type=int, help="HP instances of the systems that may split "
                     "(ascendra, ascendra-paper); default: each system's own")
    sim.add_argument("--max-seqs", type=int, help="seat limit for every system's engines")
    sim.add_argument("--model", help="built-in model name or a Hugging Face config.json path")
    sim.add_argument("--gpu", help="h100, h200 or a100")
    sim.add_argument("--ttft", type=float, help="TTFT SLO in seconds")
    sim.add_argument("--tbt", type=float, help="TBT SLO in seconds")
    sim.add_argument("--tbt-kind", help="what the TBT SLO bounds: mean, p99 or max (every gap)")
    sim.add_argument("--trace", help="replay this CSV (timestamp, prompt, output tokens) instead")
    sim.add_argument("--seed", type=int)
    sim.add_argument("--jobs", type=int, help="worker processes (default: all cores)")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_policy_flags(sim, "override every simulated system's")
    sim.set_defaults(func=_cmd_sim)

    rt = sub.add_parser("runtime", help="run one vLLM engine in its LP/HP role with its agent")
    rt.add_argument("--model", required=True, help="model directory")
    rt.add_argument("--served-model-name")
    rt.add_argument("--host", default="127.0.0.1", help="vLLM's address")
    rt.add_argument("--port", type=int, default=8101, help="vLLM's port")
    rt.add_argument("--agent-host", default="127.0.0.1", help="the agent's address")
    rt.add_argument("--agent-port", type=int, default=8100, help="the agent's port")
    rt.add_argument("--role", default="lp", help="lp, hp or mixed (baseline)")
    rt.add_argument("--role-file", help="read the role from this file (downward API labels)")
    rt.add_argument("--progress-timeout", type=float, default=30.0,
                    help="requests on the engine and no engine step for this long, s: it is "
                         "reported not ready (a hung engine core)")
    rt.add_argument("--system", default="ascendra", help="engine settings: ascendra, vllm, "
                    "sarathi")
    rt.add_argument("--max-model-len", type=int)
    rt.add_argument("--cpu", action="store_true", help="vLLM's CPU build: state its defaults "
                    "(2048-token steps, 128 seats) so the agent can report them")
    rt.add_argument("engine_args", nargs="*", help="after --: extra vLLM arguments")
    rt.set_defaults(func=_cmd_runtime)

    ro = sub.add_parser("router", help="the OpenAI-compatible router")
    ro.add_argument("--config", help="a settings file (JSON; the operator writes one) instead "
                    "of the flags below")
    ro.add_argument("--model-name", help="the model name clients use")
    ro.add_argument("--tokenizer", help="tokenizer (model) directory")
    ro.add_argument("--max-model-len", type=int)
    ro.add_argument("--instance", action="append",
                    help="ENGINE_URL[,agent=AGENT_URL][,role=lp|hp|mixed]; repeat per instance")
    ro.add_argument("--host", default="127.0.0.1")
    ro.add_argument("--port", type=int, default=8000)
    ro.add_argument("--ttft", type=float, default=1.0, help="default TTFT SLO, s")
    ro.add_argument("--tbt", type=float, default=0.15, help="default TBT SLO, s")
    ro.add_argument("--tbt-kind", default="mean", help="what the TBT SLO bounds: mean, p99 or "
                    "max (every gap)")
    ro.add_argument("--system", help="the registry's system whose policy this router runs "
                    "(default ascendra; vllm, vllm-lb, vllm-shed and sarathi are the baselines)")
    ro.add_argument("--observations", type=_output_file,
                    help="append queued requests' snapshots and times to "
                    "first token (JSONL, the deadline predictor's data) to this file")
    ro.add_argument("--predictor", help="learned deadline predictor file (ascendra predictor "
                    "train); one that does not fit is logged and the analytic one serves")
    ro.add_argument("--refit-every", type=int, default=0, help="refit the TTFT model from "
                    "the router's own observations after this many new ones (0: never)")
    ro.add_argument("--predictor-dir", help="write each refitted predictor version here")
    ro.add_argument("--progress-timeout", type=float, default=30.0,
                    help="an engine with work (its own, or this router's requests waiting "
                    "there) and no step this long is hung; its requests go elsewhere (s)")
    _add_policy_flags(ro, "override the system's")
    ro.set_defaults(func=_cmd_router)

    up = sub.add_parser("up", help="start the local stack: vLLM instances and the router")
    up.add_argument("--model", help="model directory (default: the tiny random-weight Llama)")
    up.add_argument("--instances", type=int, default=2, help="vLLM engines (one per core)")
    up.add_argument("--hp", type=int, default=0, help="of them HP (ascendra only)")
    up.add_argument("--system", default="ascendra",
                    help="a system that runs on vLLM: ascendra, vllm, vllm-lb, vllm-shed, "
                         "sarathi")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--ttft", type=float, default=1.0)
    up.add_argument("--tbt", type=float, default=0.15)
    up.add_argument("--base-port", type=int, default=8100,
                    help="instance i uses ports BASE+2i (vLLM) and BASE+2i+1 (agent)")
    up.add_argument("--max-model-len", type=int, default=2048)
    up.add_argument("--max-num-seqs", type=int, help="seat limit of every engine")
    up.add_argument("--log-dir", default=".ascendra/logs", help="where the children's logs go")
    up.set_defaults(func=_cmd_up)

    op = sub.add_parser("operator", help="run the Kubernetes operator (kopf)")
    op.add_argument("--namespace", action="append",
                    help="watch only this namespace (repeat); default: all")
    op.add_argument("--liveness", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    op.add_argument("--no-monitoring-objects", dest="monitoring_objects", action="store_false",
                    help="do not create a ServiceMonitor, PodMonitor and PrometheusRule per "
                         "service even where the prometheus-operator CRDs exist (the chart's "
                         "cluster-wide monitoring objects are used instead)")
    op.add_argument("--allow-prometheus-url", action="append", metavar="ORIGIN",
                    help="an origin (scheme://host[:port]; no port: any) that a service's "
                         "autoscaling.prometheusUrl may name besides a Service in its own "
                         "namespace (repeat)")
    op.set_defaults(func=_cmd_operator)

    b = sub.add_parser("bench", help="load an OpenAI-compatible endpoint and measure SLO "
                       "attainment and goodput")
    b.add_argument("--url", default="http://127.0.0.1:8000/v1", help="base URL (…/v1)")
    b.add_argument("--model", required=True)
    b.add_argument("--workload", default="sharegpt",
                   help="sharegpt, longbench, azure-conv, azure-code or trace:PATH")
    b.add_argument("--qps", required=True, help="comma-separated request rates")
    b.add_argument("--requests", type=int, default=200, help="requests per rate")
    b.add_argument("--ttft", type=float, default=1.0, help="TTFT SLO, s")
    b.add_argument("--tbt", type=float, default=0.15, help="TBT SLO, s")
    b.add_argument("--tbt-kind", default="mean", help="what the TBT SLO bounds: mean, p99 or "
                   "max (every gap)")
    b.add_argument("--criticality", type=int, help="sent as X-Ascendra-Criticality (negative: "
                   "sheddable, answered 429 rather than relegated)")
    b.add_argument("--arrivals", default="poisson", help="poisson or gamma")
    b.add_argument("--cv", type=float, default=1.0, help="gamma arrivals' coefficient of variation")
    b.add_argument("--length-scale", type=float, default=1.0,
                   help="scale a synthetic workload's lengths (small models, slow machines)")
    b.add_argument("--max-model-len", type=int, default=8192, help="drop longer trace requests")
    b.add_argument("--prompt", default="tokens", help="tokens (random ids) or text")
    b.add_argument("--vocab", type=int, default=1000, help="token-id prompts draw from [16, N)")
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--warmup", type=int, default=0, help="unmeasured requests sent first")
    b.add_argument("--lead-seconds", type=float, default=0.0, help="each rate's stream begins "
                   "with this many seconds of unmeasured arrivals at that rate, so that the "
                   "measured ones meet the load sustained (not an idle engine)")
    b.add_argument("--json", type=_output_file, help="write the report here")
    b.add_argument("--plot", type=_output_file, help="write attainment vs rate here (PNG)")
    b.add_argument("--label", help="name of this system in the plot")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_cmd_bench)

    pr = sub.add_parser("profile", help="measure an idle vLLM engine's iteration times "
                        "(engine-reported) into a profile CSV for the latency model")
    pr.add_argument("--url", default="http://127.0.0.1:8100", help="the engine's base URL")
    pr.add_argument("--model", required=True, help="the engine's served model name")
    pr.add_argument("--out", required=True, type=_output_file, help="profile CSV to write")
    pr.add_argument("--max-model-len", type=int, default=2048)
    pr.add_argument("--prefill", default="32,128,512,1024", help="prompt lengths to prefill")
    pr.add_argument("--decodes", default="1,4,16,64", help="decode batch sizes")
    pr.add_argument("--contexts", default="64,512", help="decode prompt lengths")
    pr.add_argument("--decode-tokens", type=int, default=32, help="tokens per decode request")
    pr.add_argument("--mixed-prefill", default="", help="prompt lengths prefilled while "
                    "--mixed-decodes streams decode (steps of a loaded engine); none by default")
    pr.add_argument("--mixed-decodes", default="", help="decode batch sizes beside them")
    pr.add_argument("--mixed-context", type=int, default=512,
                    help="prompt tokens of each of those decodes")
    pr.add_argument("--samples", type=int, default=1,
                    help="measurements of a composition whose median is its row")
    pr.add_argument("--repeat", type=int, default=2, help="rows per composition")
    pr.add_argument("--vocab", type=int, default=1000, help="token ids are drawn from [16, N)")
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(func=_cmd_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except AscendraError as e:
        print(f"ascendra: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
