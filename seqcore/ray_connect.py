"""Connecting to the Ray cluster at ``RAY_ADDRESS``: a missing cluster is one clear line, at
once. ``ray.init`` itself retries an absent cluster for minutes, printing C++ warnings."""

from __future__ import annotations

import os
import socket
from typing import Any


class ClusterUnreachable(RuntimeError):
    """No Ray cluster answers at ``RAY_ADDRESS``; the message says where and what to do."""

    @classmethod
    def at(cls, address: str, reason: str) -> ClusterUnreachable:
        return cls(
            f"no Ray cluster answers at RAY_ADDRESS={address} ({reason}); start one there "
            "(`ray start --head`), fix the address, or unset RAY_ADDRESS to let this command "
            "start a local cluster"
        )


def gcs_unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why nothing accepts a connection at a ``host:port`` (or ``ray://host:port``) Ray
    address, or None. ``ray.init`` itself retries an absent cluster for minutes, printing
    warnings; ``auto`` and other forms are left to it."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except OSError as exc:
        return (exc.strerror or str(exc) or type(exc).__name__).lower()


def check_ray_address(address: str) -> None:
    """:class:`ClusterUnreachable` when nothing answers at ``address``."""
    unreachable = gcs_unreachable(address)
    if unreachable:
        raise ClusterUnreachable.at(address, unreachable)


PACKAGES = ("seqops", "pipelines", "seqcore", "seqmodels", "data_checks", "serving")


def code_runtime_env() -> dict[str, Any]:
    """This checkout's packages as the job's ``py_modules``: a node of a cluster runs the
    driver's code, whether or not it has the project installed or can see this folder
    (docs/architecture.md §9). A local cluster started here needs none: its workers share
    this machine's files."""
    import importlib.util

    paths: list[str] = []
    for name in PACKAGES:  # located, not imported: this module sits below most of them
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            paths.extend(spec.submodule_search_locations)
    return {"py_modules": paths}


def connect(**local: Any) -> None:
    """Join the cluster in ``RAY_ADDRESS`` (checked first) or start a local one with the
    ``ray.init`` keywords in ``local``; nothing when this process is already connected."""
    import ray

    from seqcore.progress import ray_init_options

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_address(address)
        ray.init(address=address, runtime_env=code_runtime_env(), **ray_init_options())
    else:
        ray.init(**{"include_dashboard": False, **local}, **ray_init_options())
