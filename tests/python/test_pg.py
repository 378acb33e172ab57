"""The PostgreSQL kind from Python: the extension and the plugin over a URL.

Needs a server: HEAVYLOCK_TEST_PG_URL (tests/pg-cluster.sh start; eval
"$(tests/pg-cluster.sh env)"; CI does this).  Without one these tests skip
with the reason, except under CI=true, where they fail.
"""
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from helpers import overlaps

BASE = os.environ.get("HEAVYLOCK_TEST_PG_URL")
if not BASE:
    if os.environ.get("CI") == "true":
        pytest.fail("HEAVYLOCK_TEST_PG_URL is not set under CI=true: .ci/run starts a server",
                    pytrace=False)
    pytest.skip("no PostgreSQL server: HEAVYLOCK_TEST_PG_URL is not set "
                "(tests/pg-cluster.sh start; eval \"$(tests/pg-cluster.sh env)\")",
                allow_module_level=True)


def url(name):
    return f"{BASE}{'&' if '?' in BASE else '?'}name={name}_{os.getpid()}_{time.time_ns()}"


WORKER = textwrap.dedent("""
    import sys, time
    from heavylock import _native
    target, log, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lk = _native.Lock(target)
    for _ in range(n):
        lk.acquire(60.0)
        t0 = time.time()
        time.sleep(0.002)
        t1 = time.time()
        lk.release()
        with open(log, "a") as f:
            f.write(f"{t0!r} {t1!r}\\n")
    lk.close()
""")


def test_extension_excludes_across_processes(tmp_path):
    """_native.Lock on a URL goes through the seam to the pg kind: four
    processes x 15 turns never overlap (judged from recorded intervals)."""
    target, log = url("py_excl"), tmp_path / "iv.log"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, target, str(log), "15"])
             for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    iv = sorted(tuple(map(float, line.split())) + (0,) for line in open(log))
    assert len(iv) == 60
    assert overlaps(iv) == []


HEAVY = textwrap.dedent("""
    import os, time
    import pytest

    @pytest.mark.parametrize("i", range(4))
    @pytest.mark.llm
    def test_heavy(i):
        t0 = time.time()
        time.sleep(0.2)
        with open(os.environ["IV_LOG"], "a") as f:
            f.write(f"{t0!r} {time.time()!r} {os.getpid()}\\n")
""")


def test_two_pytest_runs_share_one_lock(tmp_path):
    """Two pytest runs with -n 2 each, in different directories (so a lock
    file could not be shared by accident), against one URL: their heavy tests
    never overlap, and nothing named after the URL is created on disk."""
    pytest.importorskip("xdist")
    target, log = url("py_runs"), tmp_path / "iv.log"
    env = dict(os.environ, IV_LOG=str(log), RUN_HEAVY_INTEGRATION="yes",
               HEAVYLOCK_URL=target)
    for k in ("HEAVYLOCK_PATH", "LOCAL_MODEL_PATH", "PYTEST_ADDOPTS"):
        env.pop(k, None)
    runs = []
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "test_heavy.py").write_text(HEAVY)
        runs.append(subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
             "-p", "xdist", "--heavylock-lane", "off", "--heavylock-path", target],
            cwd=tmp_path / d, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
    outs = [r.communicate(timeout=300)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs
    iv = sorted(tuple(float(x) for x in line.split()[:2]) + (int(line.split()[2]),)
                for line in open(log))
    assert len(iv) == 8
    assert overlaps(iv) == []
    assert len({pid for _, _, pid in iv}) >= 3  # several workers of both runs took turns
    for d in ("a", "b"):
        assert not any("postgres" in p.name for p in (tmp_path / d).rglob("*")), outs


VICTIM = textwrap.dedent("""
    import os, time
    import pytest

    @pytest.mark.llm
    def test_victim():
        open(os.environ["STARTED"], "w").close()
        end = time.monotonic() + 60
        while not os.path.exists(os.environ["DONE"]) and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(3)   # the plugin checks every second: a generous window

    @pytest.mark.llm
    def test_after():
        pass
""")


def test_terminated_session_fails_the_heavy_test(tmp_path):
    """pg_terminate_backend of the holder's session while a heavy test runs:
    the plugin says so at once, that test fails with "lost the lock", and
    the session goes on (the next heavy test takes the lock again)."""
    target = url("py_lost")
    started, done = tmp_path / "started", tmp_path / "done"
    (tmp_path / "test_victim.py").write_text(VICTIM)
    env = dict(os.environ, STARTED=str(started), DONE=str(done), HEAVYLOCK_URL=target)
    for k in ("HEAVYLOCK_PATH", "LOCAL_MODEL_PATH", "PYTEST_ADDOPTS", "RUN_HEAVY_INTEGRATION"):
        env.pop(k, None)
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < end and run.poll() is None, "the victim never started"
            time.sleep(0.05)
        # the holder's row in heavylock's table names its session
        q = ("SELECT count(pg_terminate_backend(backend_pid)) FROM heavylock_holders "
             "WHERE label LIKE '%test_victim%'")
        killed = subprocess.run(["psql", BASE, "-Atc", q], capture_output=True, text=True,
                                check=True).stdout.strip()
        assert killed == "1", killed
        done.touch()
        out = run.communicate(timeout=120)[0]
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, out
    assert "LOST THE LOCK" in out, out
    assert "FAILED test_victim.py::test_victim - Failed: heavylock: lost the lock:" in out, out
    assert "PASSED test_victim.py::test_after" in out, out


SLOTTED = textwrap.dedent("""
    import os, time
    import pytest

    @pytest.mark.parametrize("i", range(6))
    @pytest.mark.llm(mem="1G")
    def test_heavy(i):
        t0 = time.time()
        time.sleep(0.4)
        with open(os.environ["IV_LOG"], "a") as f:
            f.write(f"{t0!r} {time.time()!r} {os.getpid()}\\n")
""")


@pytest.mark.parametrize("args", [("--heavylock-slots", "2"),
                                  ("--heavylock-slots", "auto", "--heavylock-budget", "2.5G")])
def test_plugin_slots_on_a_url(tmp_path, args):
    """The plugin's slots on a lock server: -n 3, the lane off, 2 slots (or
    auto with a budget for two 1 GiB tests): two heavy tests overlap, never
    three."""
    pytest.importorskip("xdist")
    target, log = url("py_slots"), tmp_path / "iv.log"
    (tmp_path / "test_s.py").write_text(SLOTTED)
    env = dict(os.environ, IV_LOG=str(log), HEAVYLOCK_URL=target)
    for k in ("HEAVYLOCK_PATH", "LOCAL_MODEL_PATH", "PYTEST_ADDOPTS", "RUN_HEAVY_INTEGRATION"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                        "xdist", "-n", "3", "--heavylock-lane", "off", *args], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    iv = sorted(tuple(float(x) for x in line.split()[:2]) for line in open(log))
    assert len(iv) == 6
    points = sorted([(a, 1) for a, _ in iv] + [(b, -1) for _, b in iv])
    n = most = 0
    for _, d in points:  # the most open at one instant
        n += d
        most = max(most, n)
    assert most == 2, iv   # two at once, never three


def test_cli_run_says_when_it_loses_the_lock(cli, tmp_path):
    """`heavylock run` on a URL whose session is ended while the command runs:
    it says LOST THE LOCK within seconds (not when the command ends), and a
    command that then exits 0 gives 75 (EX_TEMPFAIL): it ran unprotected."""
    target, started, done = url("cli_lost"), tmp_path / "started", tmp_path / "done"
    wait_done = (f"import os, time; open({str(started)!r}, 'w').close()\n"
                 f"while not os.path.exists({str(done)!r}): time.sleep(0.02)")
    run = subprocess.Popen([cli, "run", "--lock", target, "--label", "cli-victim", "--",
                            sys.executable, "-c", wait_done],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # so that a failure kills the command too
    try:
        end = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < end and run.poll() is None, run.communicate()
            time.sleep(0.02)
        q = ("SELECT count(pg_terminate_backend(backend_pid)) FROM heavylock_holders "
             "WHERE label = 'cli-victim'")
        killed = subprocess.run(["psql", BASE, "-Atc", q], capture_output=True, text=True,
                                check=True).stdout.strip()
        assert killed == "1", killed
        lines = []  # stderr, read while the command still runs
        reader = threading.Thread(target=lambda: lines.extend(run.stderr), daemon=True)
        reader.start()
        end = time.monotonic() + 10
        while not any("LOST THE LOCK" in line for line in lines):
            assert time.monotonic() < end, f"no word of the lost lock within 10 s: {lines}"
            time.sleep(0.05)
        done.touch()
        run.wait(timeout=30)
        reader.join(timeout=5)
    finally:
        done.touch()
        if run.poll() is None:
            os.killpg(run.pid, 9)
            run.wait()
    assert run.returncode == 75, lines


def test_doctor_on_a_url_checks_the_server_and_hides_passwords(cli):
    ok = subprocess.run([cli, "doctor", url("doctor")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "connected to PostgreSQL" in ok.stdout and "all is well" in ok.stdout
    bad = subprocess.run([cli, "doctor", "postgresql://bob:s3cret@127.0.0.1:1/x"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "PROBLEM" in bad.stdout, bad.stdout
    assert "s3cret" not in bad.stdout + bad.stderr and "bob:***@" in bad.stdout
    run = subprocess.run([cli, "run", "-w", "1", "--lock", "postgresql://bob:s3cret@127.0.0.1:1/x",
                          "--", "true"], capture_output=True, text=True)
    assert run.returncode != 0 and "s3cret" not in run.stdout + run.stderr, run.stderr
    assert "bob:***@" in run.stderr


def test_missing_libpq_is_a_clear_error_and_files_still_lock(cli, tmp_path):
    """libpq is loaded at run time, only for a URL (issue #16): pointed at a
    missing file, a URL target fails at once naming the override, the file
    and the package to install, from the CLI and from Python; lock files
    work as ever in the same process."""
    missing = str(tmp_path / "no-such-libpq.so.5")
    env = dict(os.environ, HEAVYLOCK_LIBPQ=missing)
    r = subprocess.run([cli, "run", "--lock", url("nolib"), "--", "true"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 66, r.stderr
    for word in ("HEAVYLOCK_LIBPQ", missing, "libpq5", "brew install libpq"):
        assert word in r.stderr, (word, r.stderr)
    assert "built without" not in r.stderr
    f = subprocess.run([cli, "run", "--lock", str(tmp_path / "f.lock"), "--", "true"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert f.returncode == 0, f.stderr
    code = textwrap.dedent("""
        import sys
        from heavylock import _native
        with _native.Lock(sys.argv[2]) as lk:   # a file first: libpq is never asked for
            assert lk.held
        try:
            _native.Lock(sys.argv[1])
        except OSError as e:
            print(e)
        else:
            sys.exit("a URL opened without libpq")
    """)
    p = subprocess.run([sys.executable, "-c", code, url("nolib"), str(tmp_path / "g.lock")],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "libpq5" in p.stdout and missing in p.stdout, p.stdout


def test_one_rule_decides_what_is_a_url(cli, tmp_path):
    """hl_target_kind, the one rule (issue #16): an unknown scheme is a usage
    error naming the supported ones, from the CLI (not "built without
    PostgreSQL") and from the plugin (no directory "redis:" created); a path
    with a colon but no "://" is still a file."""
    r = subprocess.run([cli, "run", "--lock", "redis://host/x", "--", "true"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 64, r.stderr
    assert "no known lock server" in r.stderr and "postgresql://" in r.stderr, r.stderr
    assert "built without" not in r.stderr
    s = subprocess.run([cli, "status", "--lock", "redis://host/x"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert s.returncode == 64 and "no known lock server" in s.stderr, s.stderr
    (tmp_path / "test_a.py").write_text("import pytest\n\n@pytest.mark.llm\ndef test_a():\n"
                                        "    pass\n")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--heavylock-path", "redis://h/x", "test_a.py"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 4, p.stdout + p.stderr  # pytest's usage error
    assert "redis://h/x" in p.stderr and "postgresql://" in p.stderr, p.stderr
    assert not (tmp_path / "redis:").exists()
    f = subprocess.run([cli, "run", "--lock", "./redis:x", "--", "true"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert f.returncode == 0 and (tmp_path / "redis:x").is_file(), f.stderr
    from heavylock import _native
    assert [_native.target_kind(t) for t in ("redis://h/x", "./redis:x", "postgres://h/d",
                                             "postgresql://h/d", "C://x", "a/b://c")] == \
        ["unknown", "file", "pg", "pg", "file", "file"]


SECRET = "Pw9zQ7xSecret"
SECRET2 = "Qp2Query8Pass"


def test_no_password_in_any_output_of_a_full_run(cli, tmp_path):
    """One redaction (hl_redact) for everything shown (issue #17 item 5): a
    holder and a waiter on a URL with a password in its user info and a
    second one in ?password=; status, status --json, doctor (the holder's
    command line), the CLI's waiting notice and timeout, a pytest run with
    the plugin (waiting, timing out, summary, --heavylock-report,
    --heavylock-timeline, the Timeout pickled through xdist).  The
    passwords appear in no output and no file written."""
    host = BASE.split("://", 1)[1]
    assert host.startswith("postgres@"), BASE  # the cluster trusts: any password passes
    name = f"secret_{os.getpid()}_{time.time_ns()}"
    target = f"postgresql://postgres:{SECRET}@{host.split('@', 1)[1]}"
    target += f"{'&' if '?' in target else '?'}name={name}&password={SECRET2}"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    outputs = []
    started = tmp_path / "started"
    holder = subprocess.Popen([cli, "run", "--lock", target, "--label", f"holder {target}", "--",
                               sys.executable, "-c",
                               f"import time; open({str(started)!r}, 'w').close(); "
                               "time.sleep(30)", target],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        end = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < end and holder.poll() is None
            time.sleep(0.02)
        for args in (["status", "--lock", target], ["status", "--json", "--lock", target],
                     ["doctor", target], ["run", "-v", "-w", "1.5", "--lock", target, "--", "true"],
                     ["run", "-n", "--lock", target, "--", "true"],
                     ["run", "-w", "1", "--lock",
                      f"postgresql://bob:{SECRET}@127.0.0.1:1/x?password={SECRET2}", "--", "true"]):
            r = subprocess.run([cli] + args, capture_output=True, text=True, timeout=120)
            outputs.append((args[0], r.returncode, r.stdout + r.stderr))
        assert outputs[0][1] == 1 and "held" in outputs[0][2], outputs[0]
        assert outputs[3][1] != 0 and "waiting for" in outputs[3][2], outputs[3]
        assert "postgres:***@" in outputs[0][2], outputs[0]
        (tmp_path / "test_heavy.py").write_text(textwrap.dedent("""
            import pytest

            @pytest.mark.llm
            @pytest.mark.parametrize("i", range(2))
            def test_heavy(i):
                pass
        """))
        p = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                            "-n", "2", "--heavylock-path", target, "--heavylock-timeout", "2",
                            "--heavylock-report", str(out_dir / "report.json"),
                            "--heavylock-timeline", str(out_dir / "timeline.svg"),
                            "test_heavy.py"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, PYTHONWARNINGS="default"))
        outputs.append(("pytest", p.returncode, p.stdout + p.stderr))
        assert p.returncode != 0 and "gave up after waiting" in p.stdout + p.stderr, \
            p.stdout[-3000:] + p.stderr[-3000:]
    finally:
        os.killpg(holder.pid, 9)
        hout, herr = holder.communicate()
    outputs.append(("holder", holder.returncode, hout + herr))
    written = [f for f in out_dir.iterdir()]
    assert {f.name for f in written} >= {"report.json"}, written
    for f in written:
        outputs.append((f.name, 0, f.read_text(errors="replace")))
    for what, rc, text in outputs:
        for secret in (SECRET, SECRET2):
            assert secret not in text, (what, rc, text[max(0, text.find(secret) - 300):][:600])


def test_create_table_shown_to_a_role_without_create_runs_as_printed(cli):
    """A role that may not create heavylock_holders is shown the statement
    (issue #17 item 6): whole (it was cut at 605 bytes) and runnable as
    printed on one line (its "--" comments swallowed the rest).  The printed
    statement, run by a superuser with psql, creates the table; then the
    role's run works."""
    tag = f"{os.getpid()}_{time.time_ns() % 10**6}"
    db, role = f"nocreate_{tag}", f"nocreate_{tag}"
    psql = ["psql", BASE, "-v", "ON_ERROR_STOP=1", "-Atc"]
    subprocess.run(psql + [f"CREATE DATABASE {db}"], check=True, capture_output=True)
    subprocess.run(psql + [f"CREATE ROLE {role} LOGIN"], check=True, capture_output=True)
    server = BASE.split("@", 1)[1].split("/", 1)[0]
    dbu = f"{BASE.rsplit('/', 1)[0]}/{db}"
    try:  # (the default since PostgreSQL 15; said for older servers)
        subprocess.run(["psql", dbu, "-Atc", "REVOKE CREATE ON SCHEMA public FROM PUBLIC"],
                       check=True, capture_output=True)
        target = f"postgresql://{role}@{server}/{db}?name=ddl"
        r = subprocess.run([cli, "run", "-n", "--lock", target, "--", "true"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "create it once as: " in r.stderr, r.stderr
        ddl = r.stderr.split("create it once as: ", 1)[1].strip()
        assert ddl.startswith("CREATE TABLE") and ddl.endswith(")"), ddl
        assert "--" not in ddl
        made = subprocess.run(["psql", dbu, "-v", "ON_ERROR_STOP=1", "-Atc", ddl],
                              capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        subprocess.run(["psql", dbu, "-Atc", f"GRANT SELECT, INSERT, UPDATE, DELETE ON "
                        f"heavylock_holders TO {role}"], check=True, capture_output=True)
        ok = subprocess.run([cli, "run", "-n", "--lock", target, "--", "true"],
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
    finally:
        subprocess.run(psql + [f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)
        subprocess.run(psql + [f"DROP ROLE IF EXISTS {role}"], capture_output=True)


# ---- a server that stops answering (issue #17 item 4) ----
# Every round trip is bounded: by what is left of the caller's deadline, at
# least ROUND_TRIP_MIN_S (kind-pg.c, 5 s; also the bound when opening).  The
# windows below are that bound plus a generous margin for a loaded machine.
ROUND_TRIP = 5.0
MARGIN = 10.0


def _timed(cmd, **kw):
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    return r, time.monotonic() - t0


def test_a_server_that_accepts_tcp_and_never_answers_times_out(cli):
    """A TCP server that accepts and never says a word: `run -n`, `run -w 1`
    and `status` each return within the bound, saying "timed out" (it used
    to take libpq's 10 s connect_timeout and say "Connection refused", and
    a statement could wait forever)."""
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])  # kept open, never answered
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    target = f"postgresql://postgres@127.0.0.1:{port}/postgres?name=silent&sslmode=disable"
    try:
        for args in (["run", "-n", "--lock", target, "--", "true"],
                     ["run", "-w", "1", "--lock", target, "--", "true"],
                     ["status", "--lock", target]):
            r, took = _timed([cli] + args)
            assert r.returncode not in (0, 1) or args[0] == "status" and r.returncode != 0, \
                (args, r.returncode, r.stderr)
            assert "timed out" in r.stderr, (args, r.stderr)
            assert took < ROUND_TRIP + MARGIN, (args, took)
        assert held, "the client never connected"
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()


@pytest.fixture
def own_db():
    """A database of this test's own (URL without parameters): a test that
    locks the holders table must not stall the other tests (xdist)."""
    db = f"own_{os.getpid()}_{time.time_ns() % 10**9}"
    subprocess.run(["psql", BASE, "-Atc", f"CREATE DATABASE {db}"], check=True,
                   capture_output=True)
    base = BASE.split("?", 1)[0].rsplit("/", 1)[0] + "/" + db
    if "?" in BASE:
        base += "?" + BASE.split("?", 1)[1]
    yield base
    subprocess.run(["psql", BASE, "-Atc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"],
                   capture_output=True)


def _in(base, name):
    return f"{base}{'&' if '?' in base else '?'}name={name}"


def _psql_session(sql, base=BASE):
    """A psql session that runs `sql` and then stays (holding what it took)
    until killed."""
    p = subprocess.Popen(["psql", base, "-v", "ON_ERROR_STOP=1", "-Atq"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdin.write(sql + "\n\\echo READY\n")
    p.stdin.flush()
    line = p.stdout.readline()
    assert line.strip() == "READY", (line, p.stderr.read() if p.poll() is not None else "")
    return p


def _sql(q, base=BASE):
    return subprocess.run(["psql", base, "-Atc", q], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_holders_table_locked_by_another_session_times_out(cli, own_db):
    """Another session holds heavylock_holders in ACCESS EXCLUSIVE mode:
    `run -n` and `run -w 2` return within the bound saying "timed out"
    (they waited for the table forever, statement_timeout = 0); once the
    table is free the same command runs."""
    target = _in(own_db, "tablelocked")
    assert subprocess.run([cli, "run", "-n", "--lock", target, "--", "true"]).returncode == 0
    locker = _psql_session("BEGIN; LOCK TABLE heavylock_holders IN ACCESS EXCLUSIVE MODE;",
                           own_db)
    try:
        for args in (["-n"], ["-w", "2"], ["--slots", "2", "-n"]):
            r, took = _timed([cli, "run"] + args + ["--lock", target, "--", "true"])
            assert r.returncode != 0 and "timed out" in r.stderr, (args, r.returncode, r.stderr)
            assert took < ROUND_TRIP + 2 + MARGIN, (args, took)
    finally:
        locker.kill()
        locker.wait()
    r = subprocess.run([cli, "run", "-w", "30", "--lock", target, "--", "true"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_waiter_whose_backend_is_stopped_returns_in_time(cli, tmp_path):
    """The waiter's own backend is stopped (SIGSTOP) while it queues in the
    server: `run -w 3` still returns within its deadline plus the bound
    (leaving the server's queue waited forever for the cancel's answer)."""
    target, started = url("stopped"), tmp_path / "started"
    holder = subprocess.Popen([cli, "run", "--lock", target, "--label", "holder", "--",
                               sys.executable, "-c",
                               f"import time; open({str(started)!r}, 'w').close(); "
                               "time.sleep(60)"], start_new_session=True)
    backend = None
    try:
        end = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < end and holder.poll() is None
            time.sleep(0.02)
        t0 = time.monotonic()
        waiter = subprocess.Popen([cli, "run", "-w", "3", "--lock", target, "--label",
                                   "stopped-waiter", "--", "true"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        name = target.rsplit("name=", 1)[1]
        q = (f"SELECT backend_pid FROM heavylock_holders WHERE name = '{name}' "
             "AND state = 'w' AND label = 'stopped-waiter'")
        while not backend:
            assert time.monotonic() - t0 < 3, "the waiter never showed in the table"
            backend = int(_sql(q) or 0)
            time.sleep(0.02)
        os.kill(backend, 19)  # SIGSTOP: it answers nothing, not even the cancel
        out, err = waiter.communicate(timeout=60)
        took = time.monotonic() - t0
        assert waiter.returncode == 1, (waiter.returncode, err)  # the conflict exit code
        assert "timeout" in err or "timed out" in err, err
        assert took < 3 + ROUND_TRIP + MARGIN, took
    finally:
        if backend:
            os.kill(backend, 18)  # SIGCONT
        if holder.poll() is None:
            os.killpg(holder.pid, 9)
        holder.wait()


def test_client_killed_mid_statement_leaves_no_slot_behind(cli, own_db):
    """A slot holder killed while its backend is blocked in a statement (its
    holder row waits for a locked table): the backend notices the client is
    gone within seconds (client_connection_check_interval) and its slot and
    `main` keys go with it, while the table is still locked.  Before, they
    stayed held until the statement ended, and a later `--slots 2 -n` was
    refused with no live client holding."""
    target = _in(own_db, "killedmid")
    assert subprocess.run([cli, "run", "-n", "--lock", target, "--", "true"]).returncode == 0
    code = textwrap.dedent("""
        import os, sys
        from heavylock import _native
        lk = _native.Lock(sys.argv[1])
        lk.set_slots(2)
        sys.stdout.write("open\\n"); sys.stdout.flush()
        sys.stdin.readline()          # the table is locked now
        lk.acquire(10.0)              # the slot is taken; its row waits
        sys.stdout.write(f"held\\n"); sys.stdout.flush()
        os.kill(os.getpid(), 9)
    """)
    p = subprocess.Popen([sys.executable, "-c", code, target], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "open\n"
    locker = _psql_session("BEGIN; LOCK TABLE heavylock_holders IN SHARE MODE;", own_db)
    try:
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline() == "held\n"
        assert p.wait(timeout=30) == -9
        # The dead client's backend: blocked on the table, holding advisory keys.
        q = ("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
             "WHERE l.locktype = 'advisory' AND a.application_name LIKE "
             f"'heavylock {p.pid}@%'")
        end = time.monotonic() + 15
        while int(_sql(q, own_db)) > 0:
            assert time.monotonic() < end, "the dead client's backend still holds its keys"
            time.sleep(0.1)
    finally:
        locker.kill()
        locker.wait()


def test_lock_name_that_is_not_utf8_is_a_usage_error(cli):
    """name=%FF%FE used to hold the lock with no row and make status exit 66
    "Protocol error" (issue #17 item 7): refused at once, naming it."""
    target = url("x").rsplit("name=", 1)[0] + "name=%FF%FE"
    for args in (["run", "--lock", target, "--", "true"], ["status", "--lock", target]):
        r = subprocess.run([cli] + args, capture_output=True, text=True, timeout=60)
        assert r.returncode == 64, (args, r.returncode, r.stderr)
        assert "name=%FF%FE" in r.stderr and "UTF-8" in r.stderr, r.stderr
    ok = subprocess.run([cli, "run", "--lock", url("caf%C3%A9"), "--", "true"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("change, said", [
    ("ADD COLUMN extra integer NOT NULL", "column extra NOT NULL without a default"),
    ("ALTER COLUMN weight TYPE text", "column weight is text; heavylock needs bigint"),
    ("DROP COLUMN machine", "no column machine"),
])
def test_holders_table_of_the_wrong_shape_is_reported(cli, own_db, change, said):
    """A pre-created heavylock_holders of another shape (issue #17 item 7:
    an extra NOT NULL column made runs succeed with no row, and --mem
    --budget fail with 66 "Protocol error"): every run says what is wrong
    with the table, and works again once it is fixed."""
    target = _in(own_db, "shape")
    assert subprocess.run([cli, "run", "-n", "--lock", target, "--", "true"]).returncode == 0
    _sql(f"ALTER TABLE heavylock_holders {change}", own_db)
    for args in (["-n"], ["--mem", "1G", "--budget", "4G", "-n"]):
        r = subprocess.run([cli, "run"] + args + ["--lock", target, "--", "true"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 66, (args, r.returncode, r.stderr)
        assert "heavylock_holders is not the one heavylock needs" in r.stderr, r.stderr
        assert said in r.stderr, r.stderr
    _sql("DROP TABLE heavylock_holders", own_db)
    assert subprocess.run([cli, "run", "-n", "--lock", target, "--", "true"]).returncode == 0


def test_status_wording_for_a_server(cli, tmp_path):
    """Issue #17 item 12: `status` of a URL held from another machine names
    the holder (pid on host), not "(no holder record: the holder is another
    tool, e.g. flock(1) or filelock)"; a status error on a server does not
    say "cannot read lock file".  The other machine: a UTS namespace with
    another hostname (unshare -u), so the holder is not local."""
    import shutil
    import socket
    assert shutil.which("unshare"), "util-linux unshare is needed"
    target, started = url("wording"), tmp_path / "started"
    holder = subprocess.Popen([cli, "run", "--lock", target, "--label", "far away", "--",
                               sys.executable, "-c",
                               f"import time; open({str(started)!r}, 'w').close(); "
                               "time.sleep(60)"], start_new_session=True)
    try:
        end = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < end and holder.poll() is None
            time.sleep(0.02)
        r = subprocess.run(["unshare", "-u", "sh", "-c",
                            'hostname elsewhere && exec "$0" status --lock "$1"', cli, target],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"holder:  pid {holder.pid} on {socket.gethostname()}" in r.stdout, r.stdout
        assert "label:   far away" in r.stdout, r.stdout
        assert "no holder record" not in r.stdout and "flock(1)" not in r.stdout, r.stdout
    finally:
        os.killpg(holder.pid, 9)
        holder.wait()
    bad = subprocess.run([cli, "status", "--lock", "postgresql://u@127.0.0.1:1/x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 66, bad.stderr
    assert "lock file" not in bad.stderr and "cannot read the lock's status from" in bad.stderr


def test_server_ends_a_stopped_clients_blocked_statement(own_db):
    """The server's own bound (statement_timeout, lock_timeout set from the
    acquisition's deadline): a client stopped (SIGSTOP) right after a
    try-once acquisition, its holder row blocked on a locked table, cannot
    give up on the statement itself; the server ends it within its bound
    (8 s for a try-once) instead of leaving it waiting forever."""
    target = _in(own_db, "stoppedclient")
    code = textwrap.dedent("""
        import os, signal, sys
        from heavylock import _native
        lk = _native.Lock(sys.argv[1])
        lk.set_slots(2)
        sys.stdout.write("open\\n"); sys.stdout.flush()
        sys.stdin.readline()          # the table is locked now
        lk.acquire(0)                 # try once: the slot is taken; its row waits
        sys.stdout.write("held\\n"); sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGSTOP)
    """)
    p = subprocess.Popen([sys.executable, "-c", code, target], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    locker = None
    try:
        assert p.stdout.readline() == "open\n"
        locker = _psql_session("BEGIN; LOCK TABLE heavylock_holders IN SHARE MODE;", own_db)
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline() == "held\n"
        q = ("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
             f"'heavylock {p.pid}@%' AND state = 'active' AND wait_event_type = 'Lock'")
        t0 = time.monotonic()
        assert int(_sql(q, own_db)) == 1  # blocked on the table
        while int(_sql(q, own_db)) > 0:
            assert time.monotonic() - t0 < 8 + MARGIN, "the statement still waits"
            time.sleep(0.2)
        assert time.monotonic() - t0 > 1  # ended by its bound, not at once
    finally:
        p.send_signal(9)
        p.wait()
        if locker:
            locker.kill()
            locker.wait()


def test_the_async_wait_thread_is_named_without_the_password():
    """aio's waiting thread was named after the raw URL: its password showed
    in thread dumps (py-spy, threading.enumerate) and in an "Exception in
    thread" line."""
    import asyncio
    import heavylock
    from heavylock import aio
    host = BASE.split("://", 1)[1].split("@", 1)[1]
    target = f"postgresql://postgres:{SECRET}@{host}"
    target += f"{'&' if '?' in target else '?'}name=aio_{os.getpid()}_{time.time_ns()}"
    holder = heavylock.open_lock(target)
    assert holder.acquire(5)
    try:
        async def wait():
            task = asyncio.create_task(aio.open_lock(target).acquire())
            names = []
            end = time.monotonic() + 30
            while not any(n.startswith("heavylock-aio-wait") for n in names):
                assert time.monotonic() < end, names
                await asyncio.sleep(0.02)
                names = [t.name for t in threading.enumerate()]
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return names
        names = asyncio.run(wait())
    finally:
        holder.release()
    shown = [n for n in names if n.startswith("heavylock-aio-wait")]
    assert shown == [f"heavylock-aio-wait {target.replace(SECRET, '***')}"], shown
