"""The command line every pipeline stage shares: arguments, params, ``run``, exit codes.

A stage's ``main()`` is one call to ``stage_main`` (STYLE.md 2: a thin CLI over a pure
``run``). It adds ``--params`` to the stage's own arguments, configures logging, loads
``params.yaml``, calls the stage and turns its errors into the exit codes that ``dvc repro``
and the tests read:

* 0: the stage ran and wrote its outputs;
* 1: the stage ran and failed (a blocking data check, no training examples, a failed fit);
  the message says ``<stage>: failed: ...``;
* 2: bad params or a missing or unusable input (``ConfigError``, ``FileNotFoundError``, a
  shard manifest or logged model that cannot be read, and the stage's own input errors); the
  message says ``<stage>: ...``.

These messages are one line on stderr, without a traceback: they name the key, file or
column. Any other exception is a bug and keeps its traceback. Ray's and MLflow's own output
stays out of the terminal unless ``--verbose`` (``seqcore.progress``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from pipelines.config import Params, load_params
from seqcore.config import ConfigError
from seqcore.loading import ModelLoadError
from seqcore.manifest import ManifestError
from seqcore.progress import VERBOSE_ENV, quiet
from seqcore.store import StoreError

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

ErrorTypes = tuple[type[Exception], ...]


def stage_main(
    name: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    body: Callable[[Params, argparse.Namespace], int],
    argv: Sequence[str] | None = None,
    *,
    doc: str | None = None,
    input_errors: ErrorTypes = (),
    failures: ErrorTypes = (),
) -> int:
    """Parse ``argv``, load the params, run ``body(params, args)``; return the exit code.

    ``add_arguments`` adds the stage's arguments (inputs and outputs, with the paths of
    dvc.yaml as defaults); ``body`` calls the stage's ``run`` and reports what it wrote,
    returning 0, or 1 for a failure it reports itself. ``doc`` (the stage module's
    docstring) gives ``--help`` its first paragraph.
    """
    description = (doc or "").split("\n\n")[0] or None
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{name}", description=description)
    parser.add_argument("--params", default="params.yaml", help="the params file")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help=f"show Ray's and MLflow's own output here too (or set {VERBOSE_ENV}=1)",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    quiet()
    bad_input: ErrorTypes = (
        ConfigError,
        FileNotFoundError,
        ManifestError,
        ModelLoadError,
        StoreError,
        *input_errors,
    )
    try:
        return body(load_params(args.params), args)
    except bad_input as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except failures as exc:
        print(f"{name}: failed: {exc}", file=sys.stderr)
        return 1
