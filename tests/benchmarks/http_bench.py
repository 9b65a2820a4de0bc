"""HTTP decisions under gunicorn: POST /v1/decide beside GET /livez, on SQLite and PostgreSQL.

The real server (`copybandit serve --workers 2`, sync workers, scheduler off) on loopback, on a
database made by `copybandit init --no-demo-history` (the demo experiment, 3 segments x 3 arms),
with a `serve` key. Each decision commits its impression row and counter before the answer.

Load comes from other processes, so the client's CPU is not the server's:
- peak throughput: Debian's `wrk` (C, epoll; a few per cent of a core at these rates), one thread,
  8 connections, with rounds of /livez and /v1/decide alternated so that a change in background
  load hits both; the median round of each is its peak;
- latency: an open-loop client of our own (`paced_client.c`, compiled here: epoll over
  non-blocking sockets) that starts a request every 1/rate seconds whether or not earlier ones
  have answered, at 80% of decide's peak, and times each from when it was due, not when it was
  sent (plain wrk cannot pace, and a closed loop hides queueing).

Beside req/s, each round records the CPU the gunicorn workers (and, on PostgreSQL, the database's
server processes) spent per answer, read from /proc: unlike req/s it hardly moves when other work
shares the machine, and livez's CPU over decide's is the ratio the req/s would show if CPU alone
bounded both.

Afterwards every impression id a client saw in a 200 answer must be a row (nothing acknowledged is
lost); rows beyond those are requests wrk abandoned in flight when its time ran out (at most its
connection count per run). The paced client waits for every answer, so there rows == 200s exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.benchmarks.targets import target

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKERS = 2
CONNECTIONS = 8
ROUNDS = 3
ROUND_SECONDS = 4
WARMUP_SECONDS = 2
PACED_SECONDS = 12
PACED_FRACTION = 0.8
RATIO_GOAL = 0.5
P99_GOAL_MS = 25.0
SEGMENTS = ("weekend-hikers", "trail-racers", "value-seekers")
# The test server CI starts; each bench makes a database of its own there and drops it.
POSTGRES_URL = os.environ.get(
    "COPYBANDIT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

_WRK_SCRIPT = """
-- Written by tests/benchmarks/http_bench.py: cycle the bodies, count 200s, keep impression ids.
local threads = {}
function setup(thread) table.insert(threads, thread) end

function init(args)
  ok, other, ids, n, reqs = 0, 0, {}, 0, {}
  for i, body in ipairs(BODIES) do reqs[i] = wrk.format(METHOD, PATH, HEADERS, body) end
end

function request()
  n = n + 1
  return reqs[(n % #reqs) + 1]
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
    if CAPTURE then
      local id = string.match(body, '"impression_id":%s*"(%x+)"')
      if id then ids[#ids + 1] = id end
    end
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local out = io.open(OUT .. ".ids", "w")
  local ok_all, other_all = 0, 0
  for _, t in ipairs(threads) do
    ok_all = ok_all + t:get("ok")
    other_all = other_all + t:get("other")
    for _, id in ipairs(t:get("ids")) do out:write(id, "\\n") end
  end
  out:close()
  local e = summary.errors
  local f = io.open(OUT, "w")
  f:write(string.format(
    '{"responses": %d, "ok": %d, "other": %d, "seconds": %.6f, "connect_errors": %d, '
    .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_ms": %.3f, "p99_ms": %.3f}',
    summary.requests, ok_all, other_all, summary.duration / 1e6, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
  f:close()
end
"""


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (Linux /proc; 0 where unreadable)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _server_processes(arbiter: int, database: str | None) -> dict[str, list[int]]:
    """The gunicorn workers (the arbiter's children) and, on PostgreSQL, the server processes
    serving our database (their command line names it)."""
    found: dict[str, list[int]] = {"workers": [], "database": []}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat[1]) == arbiter:
            found["workers"].append(int(entry.name))
        elif database and command.startswith("postgres: ") and f" {database} " in command:
            found["database"].append(int(entry.name))
    return found


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string of ASCII text is a valid Lua string literal


def _decide_bodies() -> list[str]:
    return [json.dumps({"experiment": 1, "segment": segment}) for segment in SEGMENTS]


def _wrk(
    server: _Server, path: str, key: str, seconds: float, workdir: Path, tag: str
) -> tuple[dict[str, Any], list[str]]:
    """One wrk run; its figures (with the server's CPU per answer) and the impression ids it saw
    in 200 answers."""
    port = server.port
    decide = path == "/v1/decide"
    out = workdir / f"wrk-{tag}.json"
    headers = (
        {"Content-Type": "application/json", "Authorization": f"Bearer {key}"} if decide else {}
    )
    bodies = _decide_bodies() if decide else []
    prelude = (
        f"METHOD = {_lua_string('POST' if decide else 'GET')}\n"
        f"PATH = {_lua_string(path)}\n"
        "HEADERS = {"
        + ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items())
        + "}\n"
        "BODIES = {" + (", ".join(_lua_string(b) for b in bodies) or "false") + "}\n"
        f"CAPTURE = {'true' if decide else 'false'}\n"
        f"OUT = {_lua_string(str(out))}\n"
    )
    script = workdir / f"wrk-{tag}.lua"
    script.write_text(prelude + _WRK_SCRIPT)
    processes = _server_processes(server.pid, server.database)
    cpu_before = {name: _cpu_seconds(pids) for name, pids in processes.items()}
    completed = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    if completed.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed: {completed.stdout}{completed.stderr}")
    figures = json.loads(out.read_text())
    figures["rate"] = figures["ok"] / figures["seconds"]
    for name, pids in processes.items():
        used = _cpu_seconds(pids) - cpu_before[name]
        figures[f"{name}_cpu_ms_per_answer"] = 1000 * used / max(1, figures["responses"])
    ids = (out.parent / (out.name + ".ids")).read_text().split()
    return figures, ids


# --- the paced (open-loop) client: paced_client.c, compiled here -------------------------------


def _paced_binary(workdir: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("the paced HTTP client is C: install a compiler (apt-get install gcc)")
    binary = workdir / "paced_client"
    source = Path(__file__).with_name("paced_client.c")
    built = subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(binary), str(source), "-lm"],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        raise RuntimeError(f"compiling {source.name} failed:\n{built.stderr}")
    return binary


def _paced(
    client: Path, port: int, key: str, rate: float, seconds: float, workdir: Path
) -> dict[str, Any]:
    """Start request i at start + i/rate, on a new connection, whatever earlier requests are
    doing; time each from when it was due. The figures say how much CPU the client used."""
    requests = []
    for i, body in enumerate(_decide_bodies()):
        request = workdir / f"paced-request-{i}.http"
        request.write_bytes(
            (
                f"POST /v1/decide HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body.encode())}\r\nConnection: close\r\n\r\n"
            ).encode()
            + body.encode()
        )
        requests.append(str(request))
    completed = subprocess.run(
        [str(client), str(port), repr(rate), repr(seconds), *requests],
        capture_output=True,
        text=True,
        timeout=seconds + 90,
    )
    lines = completed.stdout.splitlines()
    if completed.returncode != 0 or not lines or not lines[-1].startswith("end "):
        raise RuntimeError(f"paced client failed: {completed.stderr}{completed.stdout[-500:]}")
    _, wall, cpu = lines.pop().split()
    statuses: Counter[str] = Counter()
    latencies, lags, ids = [], [], []
    for line in lines:
        status, latency_us, lag_us, impression_id = line.split()
        statuses[status] += 1
        lags.append(float(lag_us) / 1e6)
        if status == "200":
            latencies.append(float(latency_us) / 1e6)
            if impression_id != "-":
                ids.append(impression_id)
    latencies.sort()
    lags.sort()

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else 0.0

    return {
        "requested_rate": rate,
        "sent": len(lines),
        "seconds": float(wall),
        "statuses": dict(statuses),
        "ok": statuses["200"],
        "p50_ms": pct(latencies, 0.50),
        "p90_ms": pct(latencies, 0.90),
        "p99_ms": pct(latencies, 0.99),
        "max_ms": latencies[-1] * 1000 if latencies else 0.0,
        "send_lag_p99_ms": pct(lags, 0.99),
        "client_cpu_percent": 100 * float(cpu) / float(wall),
        "ids": ids,
    }


# --- databases and the server ------------------------------------------------------------------


@contextmanager
def postgres_database(tag: str) -> Iterator[str | None]:
    """A database of this run's own on the PostgreSQL server, dropped afterwards; None (and a
    note printed) when the server cannot be reached."""
    import psycopg
    import sqlalchemy as sa

    admin = sa.engine.make_url(POSTGRES_URL).set(drivername="postgresql")
    name = f"copybandit_bench_{tag}_{os.getpid()}"
    try:
        connection = psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True)
    except psycopg.OperationalError as exc:
        print(f"  PostgreSQL skipped: cannot reach {POSTGRES_URL}: {str(exc).strip()[:200]}")
        yield None
        return
    with connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin.set(database=name).render_as_string(hide_password=False)
        finally:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return int(response.status)


def _prepare(env: dict[str, str]) -> str:
    """`copybandit init --no-demo-history`, then a serve key (made here, as `copybandit keys
    create --scope serve` would); returns the key."""
    init = subprocess.run(
        [BIN / "copybandit", "init", "--no-demo-history"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if init.returncode != 0 or "seeded demo experiment 1" not in init.stdout:
        raise RuntimeError(f"copybandit init failed: {init.stdout}{init.stderr}")
    from sqlmodel import Session

    from service.auth import create_key
    from service.config import load_settings
    from service.db import make_engine
    from service.models import Scope

    engine = make_engine(load_settings({"database_url": env["COPYBANDIT_DATABASE_URL"]}))
    try:
        with Session(engine) as session:
            _, key = create_key(session=session, scope=Scope.SERVE, label="http bench")
    finally:
        engine.dispose()
    return key


class _Server:
    def __init__(self, port: int, pid: int, database: str | None) -> None:
        self.port, self.pid, self.database = port, pid, database


@contextmanager
def _server(env: dict[str, str], log: Path, database: str | None) -> Iterator[_Server]:
    port = _free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [BIN / "copybandit", "serve", "--port", str(port), "--workers", str(WORKERS)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(port, "/livez") == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not come up:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield _Server(port, process.pid, database)
    finally:
        process.terminate()
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stored(database_url: str) -> tuple[set[str], int]:
    """Impression ids in the database, and the sum of the variants' impression counters."""
    import sqlalchemy as sa

    from service.config import normalize_database_url

    engine = sa.create_engine(normalize_database_url(database_url))
    try:
        with engine.connect() as connection:
            ids = set(connection.exec_driver_sql("SELECT id FROM impression").scalars())
            counted = connection.exec_driver_sql("SELECT SUM(impressions) FROM variant").scalar()
    finally:
        engine.dispose()
    return ids, int(counted or 0)


def _settled(database_url: str) -> set[str]:
    """The impression ids once the server has finished what wrk left in flight when its time ran
    out (at most one request per connection): otherwise those rows land in the paced window."""
    ids, _ = _stored(database_url)
    for _ in range(50):
        time.sleep(0.2)
        again, _ = _stored(database_url)
        if again == ids:
            break
        ids = again
    return ids


def _bench_backend(
    label: str, database_url: str, workdir: Path, paced_client: Path
) -> dict[str, Any]:
    import sqlalchemy as sa

    env = {
        **os.environ,
        "COPYBANDIT_DATABASE_URL": database_url,
        "COPYBANDIT_SCHEDULER": "off",
        # The load is one key at full speed: measure the server, not the per-key limit.
        "COPYBANDIT_RATE_LIMIT_PER_SECOND": "0",
        "COPYBANDIT_LOG_LEVEL": "WARNING",
    }
    started = time.perf_counter()
    key = _prepare(env)
    database = None if label == "sqlite" else sa.engine.make_url(database_url).database
    acked: list[str] = []
    wrk_abandon_bound = 0
    load_before = os.getloadavg()
    with _server(env, workdir / f"{label}-server.log", database) as server:
        for path in ("/livez", "/v1/decide"):
            _, ids = _wrk(server, path, key, WARMUP_SECONDS, workdir, f"{label}-warm{path[-4:]}")
            acked += ids
            wrk_abandon_bound += CONNECTIONS if path == "/v1/decide" else 0
        rounds: dict[str, list[dict[str, Any]]] = {"livez": [], "decide": []}
        for i in range(ROUNDS):
            order = ("/livez", "/v1/decide") if i % 2 == 0 else ("/v1/decide", "/livez")
            for path in order:
                name = "decide" if path == "/v1/decide" else "livez"
                figures, ids = _wrk(server, path, key, ROUND_SECONDS, workdir, f"{label}-{name}{i}")
                rounds[name].append(figures)
                if name == "decide":
                    acked += ids
                    wrk_abandon_bound += CONNECTIONS
        livez = statistics.median(r["rate"] for r in rounds["livez"])
        decide = statistics.median(r["rate"] for r in rounds["decide"])
        before_paced = _settled(database_url)
        paced = _paced(
            paced_client, server.port, key, PACED_FRACTION * decide, PACED_SECONDS, workdir
        )
        after_paced, _ = _stored(database_url)
    load_after = os.getloadavg()
    paced_ids = paced.pop("ids")
    acked += paced_ids
    stored, counted = _stored(database_url)
    wrk_errors = sum(
        r[k]
        for r in rounds["livez"] + rounds["decide"]
        for k in ("other", "connect_errors", "read_errors", "write_errors", "timeouts")
    )

    def cpu(name: str, kind: str) -> float:
        return round(statistics.median(r[f"{kind}_cpu_ms_per_answer"] for r in rounds[name]), 3)

    return {
        "livez_per_second": round(livez),
        "decide_per_second": round(decide),
        "decide_over_livez": round(decide / livez, 3),
        # CPU per answer does not depend on how much CPU other work left us, unlike req/s.
        "worker_cpu_ms_per_answer": {
            "livez": cpu("livez", "workers"),
            "decide": cpu("decide", "workers"),
        },
        "database_cpu_ms_per_answer": {
            "livez": cpu("livez", "database"),
            "decide": cpu("decide", "database"),
        },
        # What the req/s ratio would be if CPU alone bounded both: steadier under other load.
        "cpu_ratio": round(
            (cpu("livez", "workers") + cpu("livez", "database"))
            / (cpu("decide", "workers") + cpu("decide", "database")),
            3,
        ),
        "rounds": {
            name: [
                {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in runs
            ]
            for name, runs in rounds.items()
        },
        "wrk_errors_and_non_200": wrk_errors,
        "paced": {k: round(v, 3) if isinstance(v, float) else v for k, v in paced.items()},
        "impressions": {
            "rows": len(stored),
            "acknowledged": len(acked),
            "acknowledged_missing": len(set(acked) - stored),
            "unacknowledged_rows": len(stored - set(acked)),
            "wrk_in_flight_bound": wrk_abandon_bound,
            "paced_rows": len(after_paced - before_paced),
            "paced_200s": len(paced_ids),
            "variant_counters_sum": counted,
        },
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "bench_seconds": round(time.perf_counter() - started, 1),
    }


def _targets(label: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    impressions = result["impressions"]
    recorded = (
        impressions["acknowledged_missing"] == 0
        and impressions["paced_rows"] == impressions["paced_200s"]
        and impressions["unacknowledged_rows"] <= impressions["wrk_in_flight_bound"]
        and impressions["variant_counters_sum"] == impressions["rows"]
    )
    return [
        target(
            f"HTTP decide / livez req/s ({label})",
            100 * result["decide_over_livez"],
            f">= {100 * RATIO_GOAL:.0f}%",
            result["decide_over_livez"] >= RATIO_GOAL,
            "%",
        ),
        target(
            f"HTTP decide p99 at 80% of peak ({label})",
            result["paced"]["p99_ms"],
            f"<= {P99_GOAL_MS:g} ms",
            result["paced"]["p99_ms"] <= P99_GOAL_MS,
            "ms",
        ),
        target(
            f"HTTP acknowledged impressions lost ({label})",
            impressions["acknowledged_missing"],
            "0, rows == 200s",
            recorded,
            "rows",
        ),
    ]


def run() -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError("the HTTP benchmark needs wrk (Debian: apt-get install -y wrk)")
    results: dict[str, Any] = {
        "server": f"gunicorn, {WORKERS} sync workers, loopback, scheduler off",
        "peak_client": f"wrk -t1 -c{CONNECTIONS}, {ROUNDS} alternating rounds of "
        f"{ROUND_SECONDS} s per endpoint, median round",
        "paced_client": f"open-loop epoll client, {PACED_FRACTION:.0%} of decide's peak, "
        f"{PACED_SECONDS} s, latency from each request's due time",
        "cpus": os.cpu_count(),
    }
    targets: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="copybandit-http-bench-") as tmp:
        workdir = Path(tmp)
        # Built once, before any server starts, so no compiler runs beside a measurement.
        paced_client = _paced_binary(workdir)
        for label in ("sqlite", "postgresql"):
            if label == "sqlite":
                result = _bench_backend(
                    label, f"sqlite:///{workdir}/bench.db", workdir, paced_client
                )
            else:
                with postgres_database("http") as url:
                    if url is None:
                        results[label] = {"skipped": "PostgreSQL unreachable"}
                        continue
                    result = _bench_backend(label, url, workdir, paced_client)
            results[label] = result
            targets += _targets(label, result)
    _print(results)
    results["targets"] = targets
    return results


def _print(results: dict[str, Any]) -> None:
    print(
        f"\nHTTP decisions ({results['server']}; peak: {results['peak_client']}; "
        f"latency: {results['paced_client']})"
    )
    print(
        f"  {'backend':<11}{'livez/s':>8}{'decide/s':>9}{'ratio':>6}  {'cpu ms/answer (ratio)':<28}"
        f"{'paced/s':>8}{'p50 ms':>7}{'p99 ms':>8}{'client':>7}  {'impressions rows / 200s':<40}"
        "load avg"
    )
    for label in ("sqlite", "postgresql"):
        r = results.get(label)
        if r is None or "skipped" in r:
            print(f"  {label:<11}skipped")
            continue
        p, i = r["paced"], r["impressions"]
        w, d = r["worker_cpu_ms_per_answer"], r["database_cpu_ms_per_answer"]
        cpu = (
            f"{w['livez']:.2f} vs {w['decide']:.2f}"
            + (f"+{d['decide']:.2f}db" if d["decide"] else "")
            + f" ({r['cpu_ratio']:.0%})"
        )
        rows = (
            f"{i['rows']:,} / {i['acknowledged']:,} ({i['acknowledged_missing']} lost, "
            f"{i['unacknowledged_rows']} in flight)"
        )
        print(
            f"  {label:<11}{r['livez_per_second']:>8,}{r['decide_per_second']:>9,}"
            f"{r['decide_over_livez']:>6.0%}  {cpu:<28}{p['ok'] / p['seconds']:>8,.0f}"
            f"{p['p50_ms']:>7.1f}{p['p99_ms']:>8.1f}{p['client_cpu_percent']:>6.0f}%  {rows:<40}"
            f"{r['load_average_before'][0]:.2f} -> {r['load_average_after'][0]:.2f}"
        )


if __name__ == "__main__":
    run()
