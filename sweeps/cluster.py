"""Joining a running Ray cluster, bounded: the address is checked before ``ray.init`` sees it.

``ray.init(address=...)`` retries for as long as it likes: a port where nothing listens hangs
the driver (Ray's own GCS client retries without end), a wrong token is reported as "Failed to
connect to Ray cluster" after 20 s, and a head bound to the loopback interface is missed
because Ray rewrites 127.0.0.1 to the host's address. :func:`check_cluster` asks the cluster
the questions that can fail, each within ``ray.connect_timeout_s``, and says which one did:

1. the address resolves (``auto``: the address the last ``ray start`` on this machine recorded);
2. something listens at HOST:PORT (a plain TCP connect: refused, or no answer in time);
3. Ray's GCS answers there and accepts this driver's token (``AuthenticationError`` otherwise);
4. the cluster runs this driver's Ray and Python versions.

Only then does the driver call ``ray.init``, with the address as checked.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from landscape.variant import ConfigError


class ClusterError(ConfigError):
    """A Ray cluster could not be joined; the message names the address and Ray's reason."""


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (optionally ``ray://``) -> (host, port)."""
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _resolve_auto(given: str) -> str:
    """``auto``: the cluster ``ray start`` recorded on this machine (Ray's own lookup)."""
    from ray._private import services

    try:
        found = services.get_ray_address_from_environment("auto", None)
    except ConnectionError as exc:  # several clusters, none of them the recorded one; or none
        if "Could not find any running" not in str(exc):
            raise ClusterError(f"ray.address={given}: {_first_line(exc)}; give HOST:PORT") from None
        found = None
    if not found or found == "auto":
        raise ClusterError(
            f"ray.address={given}: no Ray cluster runs on this machine (auto joins the one that "
            "`ray start --head` recorded here); start one, or give the head's HOST:PORT"
        )
    return found


def _where(given: str, address: str) -> str:
    return f"ray.address={given}" + (f" ({address})" if address != given else "")


def _tcp_check(given: str, host: str, port: int, timeout_s: float) -> None:
    where = _where(given, f"{host}:{port}")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except socket.gaierror as exc:
        raise ClusterError(f"{where}: cannot resolve the host name ({exc.strerror})") from None
    except ConnectionRefusedError:
        raise ClusterError(
            f"{where}: nothing listens there (connection refused): is the head up "
            f"(ray start --head --port={port}) and the address right?"
        ) from None
    except TimeoutError:
        raise ClusterError(
            f"{where}: no answer within {timeout_s:g} s (host down or unreachable, or a firewall "
            "drops the port); raise ray.connect_timeout_s for a slow network"
        ) from None
    except OSError as exc:  # network unreachable, no route to host, ...
        raise ClusterError(f"{where}: unreachable ({exc.strerror or exc})") from None


def _within(timeout_s: float, call: Callable[[], Any]) -> tuple[bool, Any, BaseException | None]:
    """Run ``call`` in a daemon thread; (finished, result, error). Ray's client calls block in C++,
    where neither a timeout nor Ctrl-C reaches them; the main thread waits in short steps, so an
    interrupt still stops the driver."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # handed to the caller, which decides
            box["error"] = exc

    thread = threading.Thread(target=target, name="ray-connect-check", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive(), box.get("result"), box.get("error")


def _enable_token_auth_if_available() -> bool:
    """Turn Ray's token authentication on for this process when this machine has a token
    (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``) and ``RAY_AUTH_MODE``
    is unset: Ray does so by itself for ``auto`` only. True if it is on now."""
    from ray._private.authentication import authentication_token_setup as setup

    logger = logging.getLogger(setup.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)  # Ray warns that it turned authentication on: it should be
    try:
        return setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        logger.setLevel(level)


def _is_auth_error(error: BaseException | None) -> bool:
    return error is not None and (
        "InvalidAuthToken" in str(error) or type(error).__name__ == "AuthenticationError"
    )


def _gcs_check(given: str, address: str, timeout_s: float) -> None:
    """Ray's GCS answers at ``address``, takes our token, and runs our Ray and Python versions."""
    from ray._common.usage.usage_constants import CLUSTER_METADATA_KEY
    from ray._private import ray_constants
    from ray._private.utils import check_version_info
    from ray._raylet import GcsClient

    def ask() -> dict:
        client = GcsClient(address=address)  # its retries log in C++: RAY_BACKEND_LOG_LEVEL
        raw = client.internal_kv_get(
            CLUSTER_METADATA_KEY, namespace=ray_constants.KV_NAMESPACE_CLUSTER, timeout=timeout_s
        )
        return json.loads(raw) if raw else {}

    with _stderr_aside():  # the GCS client logs each retry from C++ straight to fd 2
        done, metadata, error = _within(timeout_s, ask)
        # a cluster that wants a token, asked without one: use this machine's token, if any
        # (turned on only then: a driver with a token mode the cluster lacks is not let in
        # by its workers)
        explicit = "RAY_AUTH_MODE" in os.environ
        if _is_auth_error(error) and not explicit and _enable_token_auth_if_available():
            done, metadata, error = _within(timeout_s, ask)
    where = _where(given, address)
    if not done:
        raise ClusterError(
            f"{where}: the port is open but Ray's GCS did not answer within {timeout_s:g} s "
            "(another service on that port, or an overloaded head); raise ray.connect_timeout_s "
            "to wait longer"
        )
    if error is not None:
        name = type(error).__name__
        if _is_auth_error(error):
            mode = os.environ.get("RAY_AUTH_MODE", "unset")
            raise ClusterError(
                f"{where}: the cluster refused this driver's authentication token "
                f"({name}: InvalidAuthToken; RAY_AUTH_MODE={mode}): give the driver the "
                "cluster's token (copy the head's ~/.ray/auth_token here, or set RAY_AUTH_TOKEN; "
                "`ray get-auth-token` on the head prints it)"
            ) from None
        raise ClusterError(
            f"{where}: something answers at that port, but not Ray's GCS ({_first_line(error)})"
        ) from None
    if metadata:
        try:
            check_version_info(metadata, "this driver", raise_on_mismatch=True)
        except Exception as exc:  # Ray raises a plain Exception on a mismatch
            raise ClusterError(
                f"{where}: version mismatch: the cluster runs Ray "
                f"{metadata.get('ray_version')} on Python {metadata.get('python_version')}, this "
                f"driver {_local_versions()}: install the same versions on the driver and every "
                "node"
            ) from exc


@contextmanager
def _stderr_aside() -> Iterator[None]:
    """File descriptor 2 goes to a scratch file for the block (a warning per retry of Ray's
    C++ client is noise: the error it ends with is what the driver reports)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _local_versions() -> str:
    import platform

    import ray

    return f"Ray {ray.__version__} on Python {platform.python_version()}"


def _head_listens_on_loopback_only(host: str, port: int, timeout_s: float) -> bool:
    """A loopback address given, and the head does not answer on the host's own address (Ray's
    rewrite of 127.0.0.1): it was started bound to the loopback interface."""
    from ray._private.services import get_node_ip_address

    try:
        node_ip = get_node_ip_address()
    except Exception:  # no usable interface: stay on loopback
        return True
    if is_loopback(node_ip):
        return True
    try:
        with socket.create_connection((node_ip, port), timeout=min(timeout_s, 2.0)):
            return False
    except OSError:
        return True


def check_cluster(
    given: str, timeout_s: float, loopback_only: Callable[[], None], log: Callable[[str], None]
) -> str:
    """Check that the cluster at ``given`` (``auto`` or HOST:PORT) can be joined by this driver;
    returns the address to hand to ``ray.init``. Raises ClusterError with one line otherwise.
    ``loopback_only`` switches this process to Ray's single-host mode, for a head that listens
    on 127.0.0.1 only."""
    address = _resolve_auto(given) if given == "auto" else given
    host, port = split_address(address)
    _tcp_check(given, host, port, timeout_s)
    if address.startswith("ray://"):  # Ray Client: its server answers, ray.init does the rest
        return address
    if is_loopback(host) and _head_listens_on_loopback_only(host, port, timeout_s):
        loopback_only()
    from ray._private.services import canonicalize_bootstrap_address

    canonical = canonicalize_bootstrap_address(address) or address
    _gcs_check(given, canonical, timeout_s)
    if canonical != given:
        log(f"the Ray cluster answers at {canonical}")
    return canonical


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".strip()
