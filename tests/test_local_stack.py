"""The local stack's engine commands: CPU engines state vLLM's CPU defaults, GPU engines keep
vLLM's own (a GPU baseline started with the CPU's 128 seats would be handicapped)."""

from __future__ import annotations

from ascendra.runtime.engine_args import CPU_DEFAULTS, EngineLaunch
from ascendra.runtime.local_stack import LocalStack, StackConfig
from ascendra.runtime.tiny_model import build_tiny_model


def test_cpu_engines_state_cpu_defaults_and_gpu_engines_do_not():
    model = build_tiny_model()
    cpu_argv, cpu_env = LocalStack(StackConfig(model=model)).runtime_command(1, "lp")
    gpu_argv, gpu_env = LocalStack(StackConfig(model=model, cpu=False)).runtime_command(1, "lp")
    assert "--cpu" in cpu_argv and cpu_env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert "--cpu" not in gpu_argv and gpu_env == {}
    assert cpu_argv[cpu_argv.index("--port") + 1] == "8102"


def test_the_systems_arguments_and_extras_override_the_platform_defaults():
    launch = EngineLaunch(model="m", port=1, system="sarathi", defaults=CPU_DEFAULTS,
                          extra=("--max-num-seqs", "4"))
    cmd = launch.argv("python")
    # The last occurrence wins in vLLM's parser: sarathi's budget, then the extra seats.
    assert cmd.index("2048") < cmd.index("512") < cmd.index("4")
    assert (launch.token_budget, launch.max_seqs) == (512, 4)
