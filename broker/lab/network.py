"""The lab network: a router namespace with one bridge per region, hosts on veths.

    root ns  brk-lab 198.18.0.1/30 --veth-- brk-ctl 198.18.0.2/30  brk-router
                                             brk-br0 198.18.1.1/24 -- brk-r0-h* -- eth0 (host ns)
                                             brk-br1 198.18.2.1/24 -- brk-r1-h* -- eth0 (host ns)

No uplink, no NAT, no default route: the only routes point into 198.18.0.0/15,
so lab traffic cannot leave the machine. Every namespace, link and nft table is
named with the ``brk`` prefix and found again by listing, so teardown works
after a crash without any state file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time

PREFIX = "brk"
LAB_NET = ipaddress.ip_network("198.18.0.0/15")
ROUTER = "brk-router"
UPLINK = "brk-lab"  # controller end, in the root namespace
UPLINK_PEER = "brk-ctl"  # router end
CONTROLLER_ADDR = "198.18.0.1"
ROUTER_ADDR = "198.18.0.2"
NFT_TABLE = "brk_lab"
TOOLS = ("ip", "nft", "unshare", "setsid", "sshd", "ssh", "ssh-keygen")
# root's PATH does not always include the sbin directories (e.g. under sudo -E)
_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])


class LabError(Exception):
    """A lab operation failed; the message says what and why."""


class UsageError(LabError):
    """The caller asked for something that does not exist (exit 2 in the CLI)."""


def tool(name: str) -> str:
    path = shutil.which(name, path=_PATH)
    if not path:
        raise LabError(f"missing tool: {name} (run `make setup` as root)")
    return path


def missing_tools() -> list[str]:
    return [t for t in TOOLS if not shutil.which(t, path=_PATH)]


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("not root: the lab needs root for network namespaces")


def run(argv: list[str], *, check: bool = True, input: str | None = None, timeout: float = 30):
    argv = [tool(argv[0]), *argv[1:]]
    res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode:
        raise LabError(f"`{' '.join(argv)}` failed: {res.stderr.strip() or res.returncode}")
    return res


def ip(*args: str, ns: str | None = None, check: bool = True):
    return run(["ip", *(["-n", ns] if ns else []), *args], check=check)


# --- addressing -------------------------------------------------------------------------------


def _lab_addr(text: str) -> str:
    # the one guard that keeps every address we configure inside the lab range
    if ipaddress.ip_interface(text).network.subnet_of(LAB_NET):
        return text
    raise LabError(f"refusing address outside {LAB_NET}: {text}")


def region_subnet(region_id: int) -> str:
    return _lab_addr(f"198.18.{region_id + 1}.0/24")


def region_gateway(region_id: int) -> str:
    return _lab_addr(f"198.18.{region_id + 1}.1")


def host_address(region_id: int, ordinal: int) -> str:
    if not 0 <= ordinal < 240:
        raise UsageError(f"host ordinal {ordinal} out of range 0..239")
    return _lab_addr(f"198.18.{region_id + 1}.{10 + ordinal}")


def bridge(region_id: int) -> str:
    return f"{PREFIX}-br{region_id}"


# --- listing ----------------------------------------------------------------------------------


def netns_list() -> list[str]:
    """Lab namespaces (``brk-*``); ``ip netns list`` prints ``name (id: N)``."""
    out = ip("netns", "list").stdout.split("\n")
    return sorted(n for n in (line.split(" ")[0] for line in out) if n.startswith(f"{PREFIX}-"))


def links(ns: str | None = None) -> list[str]:
    """Lab links (``brk*``) in a namespace; ``ip -o link`` prints ``2: name@peer: <...>``."""
    res = ip("-o", "link", "show", ns=ns, check=False)
    names = (line.split(":")[1].strip().split("@")[0] for line in res.stdout.splitlines())
    return [n for n in names if n.startswith(PREFIX)]


def link_exists(name: str, ns: str | None = None) -> bool:
    return ip("link", "show", "dev", name, ns=ns, check=False).returncode == 0


def netns_pids(name: str) -> list[int]:
    """Live processes in a network namespace (zombies have no namespace and are not listed)."""
    res = ip("netns", "pids", name, check=False)
    return [int(p) for p in res.stdout.split()] if res.returncode == 0 else []


# --- building ---------------------------------------------------------------------------------


def _sysctl(ns: str, key: str, value: str) -> None:
    # /proc/sys/net is per network namespace: write it from inside
    run(["ip", "netns", "exec", ns, "sh", "-c", f"[ ! -e {key} ] || echo {value} > {key}"])


def ensure_netns(name: str) -> bool:
    created = name not in netns_list()
    if created:
        ip("netns", "add", name)
        # lab addresses are IPv4 from 198.18.0.0/15 only: no IPv6 link-local chatter
        for conf in ("all", "default"):
            _sysctl(name, f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "1")
    ip("link", "set", "lo", "up", ns=name)
    return created


def ensure_router(region_ids: list[int]) -> bool:
    created = ensure_netns(ROUTER)
    _sysctl(ROUTER, "/proc/sys/net/ipv4/ip_forward", "1")
    for r in region_ids:
        if not link_exists(bridge(r), ROUTER):
            ip("link", "add", bridge(r), "type", "bridge", ns=ROUTER)
            created = True
        ip("addr", "replace", f"{region_gateway(r)}/24", "dev", bridge(r), ns=ROUTER)
        ip("link", "set", bridge(r), "up", ns=ROUTER)
    return created


def ensure_uplink(region_ids: list[int]) -> bool:
    """The controller's one way in: a veth to the router and a route per region subnet."""
    created = False
    if link_exists(UPLINK) and not link_exists(UPLINK_PEER, ROUTER):
        ip("link", "del", UPLINK)  # half of an old pair (router namespace was recreated)
    if not link_exists(UPLINK):
        ip("link", "add", UPLINK, "type", "veth", "peer", "name", UPLINK_PEER, "netns", ROUTER)
        _sysctl(ROUTER, f"/proc/sys/net/ipv6/conf/{UPLINK_PEER}/disable_ipv6", "1")
        v6 = f"/proc/sys/net/ipv6/conf/{UPLINK}/disable_ipv6"
        if os.path.exists(v6):
            with open(v6, "w") as f:
                f.write("1")
        created = True
    ip("addr", "replace", f"{_lab_addr(CONTROLLER_ADDR)}/30", "dev", UPLINK)
    ip("link", "set", UPLINK, "up")
    ip("addr", "replace", f"{_lab_addr(ROUTER_ADDR)}/30", "dev", UPLINK_PEER, ns=ROUTER)
    ip("link", "set", UPLINK_PEER, "up", ns=ROUTER)
    for r in region_ids:
        ip("route", "replace", region_subnet(r), "via", ROUTER_ADDR, "dev", UPLINK)
    return created


def ensure_host(name: str, region_id: int, address: str) -> bool:
    """Host namespace with ``eth0`` on its region's bridge; its router end is named after it."""
    created = ensure_netns(name)
    if not link_exists(name, ROUTER):
        if link_exists("eth0", name):
            ip("link", "del", "eth0", ns=name)
        ip("link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", name, ns=ROUTER)
        created = True
    ip("link", "set", name, "master", bridge(region_id), "up", ns=ROUTER)
    ip("addr", "replace", f"{_lab_addr(address)}/24", "dev", "eth0", ns=name)
    ip("link", "set", "eth0", "up", ns=name)
    # the whole lab range via the bridge, and nothing else: there is no default route
    ip("route", "replace", str(LAB_NET), "via", region_gateway(region_id), "dev", "eth0", ns=name)
    return created


# --- region cut (nftables in the router) -------------------------------------------------------


def _table() -> str:
    res = run(
        ["ip", "netns", "exec", ROUTER, "nft", "list", "table", "inet", NFT_TABLE], check=False
    )
    return res.stdout


def cut_regions() -> set[int]:
    return {int(r) for r in re.findall(r'comment "cut region(\d+)"', _table())}


def oneway_cuts() -> set[tuple[int, int]]:
    """(source, destination) region pairs whose traffic is dropped in that direction only."""
    found = re.findall(r'comment "oneway region(\d+)->region(\d+)"', _table())
    return {(int(a), int(b)) for a, b in found}


def apply_cuts(
    cut: set[int], region_ids: list[int], oneway: set[tuple[int, int]] = frozenset()
) -> None:
    """Replace the table in one transaction: drop routed traffic between a cut region and the
    others, and from ``a`` to ``b`` for each ``(a, b)`` in ``oneway`` (replies the other way
    still pass the router, which is what an asymmetric fault looks like). Controller traffic
    (198.18.0.0/30) is not matched, so SSH to a cut region works."""
    rules = []
    for r in sorted(cut):
        for other in region_ids:
            if other == r:
                continue
            a, b = region_subnet(r), region_subnet(other)
            for src, dst in ((a, b), (b, a)):
                rules.append(f'ip saddr {src} ip daddr {dst} drop comment "cut region{r}"')
    for a, b in sorted(oneway):
        src, dst = region_subnet(a), region_subnet(b)
        rules.append(f'ip saddr {src} ip daddr {dst} drop comment "oneway region{a}->region{b}"')
    script = f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
    if rules:
        body = "\n".join(f"    {rule}" for rule in rules)
        script += (
            f"table inet {NFT_TABLE} {{\n  chain forward {{\n"
            f"    type filter hook forward priority filter; policy accept;\n{body}\n  }}\n}}\n"
        )
    run(["ip", "netns", "exec", ROUTER, "nft", "-f", "-"], input=script)


# --- teardown ---------------------------------------------------------------------------------


def kill_netns_processes(
    name: str, keep=lambda pid: False, grace: float = 0.0, timeout: float = 10.0
) -> int:
    """Signal every process in the namespace (except ``keep``) until none is left.

    SIGTERM first when ``grace`` > 0 (brokers flush and exit), SIGKILL after it. Processes may
    fork while we sweep, so this lists again until the namespace is empty."""
    start = time.monotonic()
    killed: set[int] = set()
    while True:
        pids = [p for p in netns_pids(name) if p != os.getpid() and not keep(p)]
        if not pids:
            return len(killed)
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            raise LabError(f"{name}: processes survive SIGKILL: {pids}")
        sig = signal.SIGTERM if elapsed < grace else signal.SIGKILL
        for pid in pids:
            try:
                os.kill(pid, sig)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def delete_netns(name: str, grace: float = 0.0) -> int:
    killed = kill_netns_processes(name, grace=grace)
    ip("netns", "del", name)
    return killed


def teardown(log, grace: float = 3.0) -> None:
    """Remove every ``brk`` namespace, root-namespace link and nft table. Found by listing,
    so it also cleans up after a crash."""
    names = sorted(netns_list(), key=lambda n: n == ROUTER)  # hosts first, router last
    for name in names:
        if killed := kill_netns_processes(name, grace=grace):
            log(f"lab: {name}: stopped {killed} processes")
    # the uplink first: deleting a namespace frees its links asynchronously, deleting the
    # link ourselves is immediate (and takes its routes with it)
    for link in links():
        ip("link", "del", link, check=False)
        log(f"lab: removed link {link}")
    for name in names:
        ip("netns", "del", name, check=False)
        log(f"lab: removed netns {name}")
    res = run(["nft", "list", "tables"], check=False)
    for family, table in re.findall(r"^table (\w+) (\S+)$", res.stdout, re.M):
        if table.startswith(PREFIX):
            run(["nft", "delete", "table", family, table])
            log(f"lab: removed nft table {family} {table}")
    left = netns_list() + links()
    if left:
        raise LabError(f"still present after teardown: {', '.join(left)}")
