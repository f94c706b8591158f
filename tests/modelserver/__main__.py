"""Run the scripted model server on its own, playing a pipeline's scripted-agent scripts:

    python -m tests.modelserver --pipeline pipelines/demo.dot [--port 8765]

It prints the base URL on its first line and serves until interrupted (or `--seconds`). Point an
agent CLI at it the way the tests do (ANTHROPIC_BASE_URL, OPENAI_BASE_URL, ...)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from pathlib import Path

from tests.modelserver.core import ModelServer, script_playbook


def pipeline_scripts(path: Path) -> dict[str, str]:
    from attractor.engines.pipeline import load_pipeline

    pipeline = load_pipeline(path)
    return {name: node.script for name, node in pipeline.nodes.items() if node.script}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.modelserver", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", type=Path, required=True, help="a DOT pipeline with `script` attributes")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--seconds", type=float, help="stop after this long")
    args = parser.parse_args(argv)
    server = ModelServer(script_playbook(pipeline_scripts(args.pipeline)), port=args.port)
    with server:
        print(server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
