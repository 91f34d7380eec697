"""systemd integration: sd_notify datagrams, and the unit files in systemd/.

The unit files are checked as text (required settings, none that would break the daemon) and,
where ``systemd-analyze`` is installed, by ``systemd-analyze verify`` and ``security``.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
import yaml

from nst_batch.daemon.systemd import notify

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_UNIT = ROOT / "systemd" / "nst-batch.service"
USER_UNIT = ROOT / "systemd" / "nst-batch-user.service"
README = ROOT / "systemd" / "README.md"
EXECUTABLE = "/opt/nst-batch/.venv/bin/nst-batch"

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="AF_UNIX datagrams as systemd uses them: Linux only")


# ---- sd_notify ----------------------------------------------------------------------------


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


def _only_datagram(sock: socket.socket) -> bytes:
    data = sock.recv(4096)
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):  # exactly one datagram per notify() call
        sock.recv(4096)
    sock.settimeout(2)
    return data


@pytest.fixture
def socket_dir(tmp_path):
    """tmp_path, or a shorter folder when tmp_path is too long for a socket address (108 bytes)."""
    if len(str(tmp_path / "notify")) < 100:
        yield tmp_path
    else:
        with tempfile.TemporaryDirectory(prefix="nst-", dir="/tmp") as short:
            yield Path(short)


@linux_only
def test_notify_sends_exactly_the_fields_to_a_socket_path(socket_dir, monkeypatch):
    path = str(socket_dir / "notify")
    with _receiver(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify("READY=1", "STATUS=watching the inbox") is True
        assert _only_datagram(sock) == b"READY=1\nSTATUS=watching the inbox"
        assert notify("WATCHDOG=1") is True
        assert _only_datagram(sock) == b"WATCHDOG=1"
        assert notify("STATUS=running portrait (style-1); 2 more queued") is True
        assert _only_datagram(sock) == b"STATUS=running portrait (style-1); 2 more queued"


@linux_only
def test_notify_abstract_socket(monkeypatch):
    name = f"nst-batch-test-{os.getpid()}-{uuid.uuid4().hex}"
    with _receiver("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1") is True
        assert _only_datagram(sock) == b"STOPPING=1"


@linux_only
def test_notify_from_a_thread_comes_from_the_main_pid(socket_dir, monkeypatch):
    """NotifyAccess=main accepts only datagrams whose sender PID is the main PID; threads share it."""
    path = str(socket_dir / "notify")
    with _receiver(path) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        results = []
        thread = threading.Thread(target=lambda: results.append(notify("WATCHDOG=1")))
        thread.start()
        thread.join()
        assert results == [True]
        data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        assert data == b"WATCHDOG=1"
        creds = [d for level, kind, d in ancillary if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
        assert creds and int.from_bytes(creds[0][:4], sys.byteorder) == os.getpid()


def test_notify_without_systemd_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify("READY=1") is False


@linux_only
def test_notify_to_a_missing_socket_returns_false(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert notify("READY=1") is False


# ---- unit files as text -------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file, each a list of (key, value): keys may repeat, order is kept."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    lines = path.read_text().splitlines()
    number = 0
    while number < len(lines):
        line = lines[number].strip()
        number += 1
        while line.endswith("\\") and number < len(lines):  # continuation lines
            line = line[:-1] + " " + lines[number].strip()
            number += 1
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), [])
            continue
        key, equals, value = line.partition("=")
        assert current is not None, f"{path.name}:{number}: setting before any [Section]"
        assert equals and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()), f"{path.name}:{number}: not key=value: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(sections, section: str, key: str) -> list[str]:
    return [value for name, value in sections.get(section, []) if name == key]


def value(sections, section: str, key: str) -> str:
    found = values(sections, section, key)
    assert len(found) == 1, f"[{section}] {key}= is set {len(found)} times, expected once"
    return found[0]


def seconds(span: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span))


@pytest.fixture(scope="module")
def system_unit():
    return parse_unit(SYSTEM_UNIT)


@pytest.fixture(scope="module")
def user_unit():
    return parse_unit(USER_UNIT)


def test_system_unit_talks_to_systemd_the_way_the_daemon_does(system_unit):
    assert set(system_unit) == {"Unit", "Service", "Install"}
    assert value(system_unit, "Service", "Type") == "notify"
    assert value(system_unit, "Service", "NotifyAccess") == "main"
    assert value(system_unit, "Service", "ExecStart") == f"{EXECUTABLE} serve --config /etc/nst-batch/config.yaml"
    # pings come at most once a second, iterations on a CPU take seconds: minutes, not seconds
    assert seconds(value(system_unit, "Service", "WatchdogSec")) >= 300
    # the daemon exits within 30 s of SIGTERM
    assert value(system_unit, "Service", "KillSignal") == "SIGTERM"
    assert seconds(value(system_unit, "Service", "TimeoutStopSec")) >= 45
    assert value(system_unit, "Service", "Restart") == "on-failure"
    assert value(system_unit, "Service", "RestartPreventExitStatus") == "2"  # cli.EXIT_USAGE
    assert value(system_unit, "Install", "WantedBy") == "multi-user.target"


def test_system_unit_account_directories_and_environment(system_unit):
    assert value(system_unit, "Service", "User") == "nst-batch"
    assert value(system_unit, "Service", "Group") == "nst-batch"
    assert value(system_unit, "Service", "UMask") == "0002"
    assert value(system_unit, "Service", "CacheDirectory") == "nst-batch"
    environment = " ".join(values(system_unit, "Service", "Environment"))
    assert "TORCH_HOME=/var/cache/nst-batch/" in environment  # inside CacheDirectory=


def test_system_unit_sandbox(system_unit):
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "IPAddressDeny": "any",
        "PrivateDevices": "no",  # a private /dev has no /dev/nvidia*
        "DevicePolicy": "closed",
    }
    for key, setting in expected.items():
        assert value(system_unit, "Service", key) == setting, key
    # PyTorch's JIT (oneDNN, the CUDA driver) needs writable+executable memory
    assert not values(system_unit, "Service", "MemoryDenyWriteExecute")
    # CUDA reads /proc/driver/nvidia
    assert not values(system_unit, "Service", "ProcSubset")
    # sd_notify is an AF_UNIX datagram: a family list without AF_UNIX would silence READY=1
    assert value(system_unit, "Service", "RestrictAddressFamilies").split() == ["AF_UNIX"]
    assert "@system-service" in values(system_unit, "Service", "SystemCallFilter")


def test_system_unit_allows_the_nvidia_devices(system_unit):
    allowed = {tuple(entry.split()) for entry in values(system_unit, "Service", "DeviceAllow")}
    for node in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm"):
        assert (node, "rw") in allowed, node


def test_every_configured_folder_is_writable_in_the_sandbox(system_unit):
    """ProtectSystem=strict makes all else read-only: the README's config must point inside
    ReadWritePaths= or the unit's StateDirectory= (/var/lib/nst-batch)."""
    assert value(system_unit, "Service", "StateDirectory") == "nst-batch"
    writable = [Path(path.lstrip("-")) for entry in values(system_unit, "Service", "ReadWritePaths") for path in entry.split()]
    writable.append(Path("/var/lib/nst-batch"))
    config = next(
        block for block in re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S) if "state_dir:" in block
    )
    paths = {key: Path(path) for key, path in yaml.safe_load(config).items()}
    assert paths["state_dir"] == Path("/var/lib/nst-batch")
    for key, path in paths.items():
        assert any(path.is_relative_to(w) for w in writable), f"README's {key} {path} is read-only under the unit"


def test_user_unit(user_unit):
    assert set(user_unit) == {"Unit", "Service", "Install"}
    assert value(user_unit, "Service", "Type") == "notify"
    assert value(user_unit, "Service", "NotifyAccess") == "main"
    assert value(user_unit, "Service", "Restart") == "on-failure"
    assert value(user_unit, "Service", "ExecStart") == "%h/nst-batch/.venv/bin/nst-batch serve --config %h/nst-batch/config.yaml"
    assert seconds(value(user_unit, "Service", "WatchdogSec")) >= 300
    assert value(user_unit, "Service", "NoNewPrivileges") == "yes"
    assert value(user_unit, "Service", "CacheDirectory") == "nst-batch"
    assert "TORCH_HOME=%C/nst-batch/" in " ".join(values(user_unit, "Service", "Environment"))
    assert value(user_unit, "Service", "RestrictAddressFamilies").split() == ["AF_UNIX"]
    assert not values(user_unit, "Service", "MemoryDenyWriteExecute")
    # a user manager cannot switch users, and these need privileges or a user namespace
    for key in ("User", "Group", "CapabilityBoundingSet", "DevicePolicy", "DeviceAllow", "IPAddressDeny",
                "PrivateTmp", "ProtectSystem", "PrivateNetwork", "PrivateUsers"):
        assert not values(user_unit, "Service", key), f"{key}= in the user unit"
    assert value(user_unit, "Install", "WantedBy") == "default.target"


# ---- systemd-analyze ----------------------------------------------------------------------

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def analyze(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [ANALYZE, "--no-pager", *args], capture_output=True, text=True, timeout=30,
        env={**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_LOG_COLOR": "0", **(env or {})},
    )
    if "nrecognized option" in result.stderr or "Failed to initialize manager" in result.stderr:
        pytest.skip(f"systemd-analyze {' '.join(args[:1])} cannot run here: {result.stderr.strip().splitlines()[-1]}")
    return result


def _stand_in(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


@needs_analyze
def test_systemd_analyze_verify_system_unit(tmp_path):
    """verify wants ExecStart='s program to exist: a scratch root with a stand-in and the host's units."""
    host_units = next((Path(d) for d in ("/usr/lib/systemd/system", "/lib/systemd/system") if Path(d, "sysinit.target").exists()), None)
    if host_units is None:
        pytest.skip("no systemd unit directory with sysinit.target on this machine")
    root = tmp_path / "root"
    _stand_in(root / EXECUTABLE.lstrip("/"))
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(SYSTEM_UNIT, root / "etc/systemd/system/nst-batch.service")
    result = analyze("verify", f"--root={root}", "nst-batch.service")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"warnings: {result.stderr}"


@needs_analyze
def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path):
    """The check above would notice: a missing program fails it."""
    host_units = next((Path(d) for d in ("/usr/lib/systemd/system", "/lib/systemd/system") if Path(d, "sysinit.target").exists()), None)
    if host_units is None:
        pytest.skip("no systemd unit directory with sysinit.target on this machine")
    root = tmp_path / "root"
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(SYSTEM_UNIT, root / "etc/systemd/system/nst-batch.service")
    result = analyze("verify", f"--root={root}", "nst-batch.service")
    assert result.returncode != 0 and EXECUTABLE in result.stderr


def _uncomment_opt_in(text: str) -> str:
    """The user unit with its commented-out user-namespace block switched on (README's drop-in)."""
    return re.sub(r"^#([A-Z][A-Za-z]+=)", r"\1", text, flags=re.M)


@needs_analyze
@pytest.mark.parametrize("variant", ["as shipped", "with the opt-in sandbox"])
def test_systemd_analyze_verify_user_unit(tmp_path, variant):
    home = tmp_path / "home"
    _stand_in(home / "nst-batch/.venv/bin/nst-batch")
    (home / "run").mkdir()
    unit = tmp_path / "units" / "nst-batch.service"
    unit.parent.mkdir()
    text = USER_UNIT.read_text()
    unit.write_text(_uncomment_opt_in(text) if variant != "as shipped" else text)
    if variant != "as shipped":
        assert "\nPrivateTmp=yes" in unit.read_text()
    result = analyze("verify", "--user", str(unit), env={"HOME": str(home), "XDG_RUNTIME_DIR": str(home / "run")})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"warnings: {result.stderr}"


@needs_analyze
def test_systemd_analyze_security_exposure(tmp_path):
    result = analyze("security", "--offline=yes", "--threshold=10", str(SYSTEM_UNIT))
    overall = re.search(r"Overall exposure level for nst-batch.service: (\d+\.\d)", result.stdout)
    assert overall, result.stdout + result.stderr
    assert result.returncode == 0 and float(overall.group(1)) <= 1.0, f"exposure {overall.group(1)} > 1.0:\n{result.stdout}"


NETWORK_DROP_IN = ROOT / "systemd" / "nst-batch-network.conf"


def test_the_network_drop_in_opens_the_network_and_nothing_else():
    """Notifications and the metrics port need IP sockets; the rest of the sandbox stays as it is."""
    settings = [line for line in NETWORK_DROP_IN.read_text().splitlines() if line and not line.startswith(("#", "["))]
    assert settings == ["PrivateNetwork=no", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "IPAddressDeny="]
    assert "PrivateNetwork=yes" in SYSTEM_UNIT.read_text()  # the default unit is not weakened


def exposure(root: Path, drop_in: Path | None = None) -> float:
    """``systemd-analyze security``'s overall exposure of the unit, with ``drop_in`` if given."""
    units = root / "etc/systemd/system"
    (units / "nst-batch.service.d").mkdir(parents=True, exist_ok=True)
    shutil.copy(SYSTEM_UNIT, units / "nst-batch.service")
    for old in (units / "nst-batch.service.d").iterdir():
        old.unlink()
    if drop_in is not None:
        shutil.copy(drop_in, units / "nst-batch.service.d" / drop_in.name)
    result = analyze("security", "--offline=yes", f"--root={root}", "--threshold=10", "nst-batch.service")
    overall = re.search(r"Overall exposure level for nst-batch.service: (\d+\.\d)", result.stdout)
    assert overall, result.stdout + result.stderr
    return float(overall.group(1))


@needs_analyze
def test_systemd_analyze_security_exposure_with_the_network_drop_in(tmp_path):
    figures = [exposure(tmp_path / "root"), exposure(tmp_path / "root", NETWORK_DROP_IN)]
    assert figures[0] <= 1.0 and figures[0] < figures[1] <= 2.0, figures  # README: 0.7 SAFE, and 1.6 OK networked


RAY_DROP_IN = ROOT / "systemd" / "nst-batch-ray.conf"


def test_the_ray_drop_in_stops_the_daemon_first_and_opens_the_network_and_the_gpus():
    settings = [line for line in RAY_DROP_IN.read_text().splitlines() if line and not line.startswith(("#", "["))]
    assert "KillMode=mixed" in settings  # SIGTERM to the daemon alone: it stops the actors, then Ray
    assert [s for s in settings if s.startswith("DeviceAllow=")] == [f"DeviceAllow=/dev/nvidia{n} rw" for n in range(1, 8)]
    assert {"PrivateNetwork=no", "IPAddressDeny=", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK"} <= set(settings)
    assert "DeviceAllow=/dev/nvidia0 rw" in SYSTEM_UNIT.read_text() and "PrivateNetwork=yes" in SYSTEM_UNIT.read_text()


@needs_analyze
def test_systemd_analyze_security_exposure_with_the_ray_drop_in(tmp_path):
    figure = exposure(tmp_path / "root", RAY_DROP_IN)
    assert 1.0 < figure <= 2.0, figure  # README: 1.6 OK, against 0.7 SAFE alone
