"""The local stack's commands: CPU engines state vLLM's CPU defaults, GPU engines keep vLLM's
own (a GPU baseline started with the CPU's 128 seats would be handicapped); routers put in turn
over running engines; the benchmark models' id tokenizer."""

from __future__ import annotations

import pytest

from ascendra.core.request import Slo, TbtKind
from ascendra.errors import AscendraError
from ascendra.runtime.engine_args import CPU_DEFAULTS, EngineLaunch
from ascendra.runtime.local_stack import LocalStack, StackConfig
from ascendra.runtime.tiny_model import build_tiny_model, write_id_tokenizer


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


def test_a_router_over_the_running_engines_must_be_a_system_those_engines_serve():
    stack = LocalStack(StackConfig(model=build_tiny_model(), system="vllm", router=False))
    with pytest.raises(AscendraError, match="ascendra needs other engines"), \
            stack.router("ascendra", 9999):
        pass
    argv = stack.router_command("vllm-shed", 9001, ["--observations", "o.jsonl"],
                                Slo(2.5, 0.15, TbtKind.MAX))
    assert argv[argv.index("--system") + 1] == "vllm-shed"
    assert argv[argv.index("--ttft") + 1] == "2.5" and argv[argv.index("--tbt-kind") + 1] == "max"
    assert argv[-2:] == ["--observations", "o.jsonl"]


def test_the_id_tokenizer_turns_text_and_token_ids_into_each_other_exactly(tmp_path):
    """vLLM's benchmark client sends text; ours sends ids: both mean the same tokens."""
    from transformers import AutoTokenizer

    write_id_tokenizer(tmp_path, 128256, bos=128000, eos=128001)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    ids = [16, 903, 999, 128255]
    assert tok.decode(ids) == "t16 t903 t999 t128255"
    assert tok("t16 t903 t999 t128255").input_ids == ids  # no BOS added, no merges
    assert (tok.bos_token_id, tok.eos_token_id, len(tok)) == (128000, 128001, 128256)
    assert tok.decode([5, 128001, 6], skip_special_tokens=True) == "t5 t6"
