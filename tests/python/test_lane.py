"""The heavy lane (heavylock as xdist's scheduler), through real pytest runs
with real xdist workers.

Every claim is read from intervals the generated tests record themselves
(kind, test, start, end, pid): which worker ran what, when, and how often;
never from the plugin's own report alone, never from sleeps."""

import json
import os
import textwrap

import pytest

from helpers import overlaps

pytest.importorskip("xdist")  # a test dependency: requirements-dev.txt installs it

RECORDING = """
    import json, os, subprocess, sys, time, pytest

    LOG = os.environ["IV_LOG"]

    def record(kind, name, t0, t1):
        with open(LOG, "a") as f:
            f.write(json.dumps([kind, name, t0, t1, os.getpid()]) + "\\n")

    @pytest.fixture(scope="session")
    def model():
        # the session-scoped "model": its setups are counted per process
        t0 = time.time()
        time.sleep(0.05)
        record("model", "setup", t0, time.time())
        return "model"

    def run(kind, request, seconds):
        t0 = time.time()
        time.sleep(seconds)
        record(kind, request.node.nodeid, t0, time.time())
"""


def most_at_once(intervals):
    """The most intervals open at one instant (a sweep; an end at the same
    instant as a start comes first)."""
    points = sorted([(iv[0], 1) for iv in intervals] + [(iv[1], -1) for iv in intervals])
    n = most = 0
    for _, d in points:
        n += d
        most = max(most, n)
    return most


def module(body):
    return textwrap.dedent(RECORDING) + textwrap.dedent(body)


def records(log, kind=None):
    out = []
    if os.path.exists(log):
        for line in open(log):
            k, name, a, b, pid = json.loads(line)
            if kind is None or k == kind:
                out.append((a, b, pid, name))
    return sorted(out)


@pytest.fixture
def env(pytester, monkeypatch, tmp_path):
    for k in ("RUN_HEAVY_INTEGRATION", "LOCAL_MODEL_PATH", "HEAVYLOCK_PATH", "HEAVYLOCK_BACKEND",
              "HEAVYLOCK_TIMEOUT", "HEAVYLOCK_LANE", "HEAVYLOCK_SLOTS", "USE_LOCAL_LLM",
              "PYTEST_ADDOPTS"):
        monkeypatch.delenv(k, raising=False)
    log = tmp_path / "intervals.log"
    monkeypatch.setenv("IV_LOG", str(log))
    return log


def run(pytester, *args, timeout=120):
    return pytester.runpytest_subprocess("-p", "xdist", *args, timeout=timeout)


# Light tests collected first, heavy ones last: the lane must not wait for them.
MIXED = module("""
    @pytest.mark.parametrize("i", range(36))
    def test_light(request, i):
        run("light", request, 0.1)

    @pytest.mark.llm
    @pytest.mark.parametrize("i", range(4))
    def test_heavy(request, model, i):
        # the lane still holds the file lock: `heavylock status` names this process
        out = subprocess.run([os.environ["HEAVYLOCK_CLI"], "status", "--json",
                              "--lock", os.environ["HEAVYLOCK_PATH"]],
                             capture_output=True, text=True).stdout
        assert json.loads(out)["holder"]["pid"] == os.getpid()
        run("heavy", request, 0.3)
""")


def test_heavy_tests_run_in_one_lane_while_light_tests_fill_the_rest(pytester, env, cli,
                                                                    monkeypatch):
    monkeypatch.setenv("HEAVYLOCK_CLI", cli)
    monkeypatch.setenv("HEAVYLOCK_PATH", str(pytester.path / "models" / ".llm_load.lock"))
    pytester.makepyfile(test_mix=MIXED)
    r = run(pytester, "-n", "4", "--heavylock-report=r.json", "--heavylock-timeline=t.svg")
    r.assert_outcomes(passed=40)
    heavy, light = records(env, "heavy"), records(env, "light")
    assert len(heavy) == 4 and len(light) == 36
    lane = {pid for _, _, pid, _ in heavy}
    assert len(lane) == 1, f"heavy tests ran on several workers: {lane}"
    assert overlaps(heavy) == []
    # the lane took light work only once its heavy queue was empty
    assert all(lt[0] > heavy[-1][0] for lt in light if lt[2] in lane)
    # and light tests ran on the other workers meanwhile
    during = [lt for lt in light if lt[0] < heavy[-1][1] and lt[1] > heavy[0][0]]
    assert len({pid for _, _, pid, _ in during}) >= 2
    # the heavy queue started at once although collected last
    before = [lt for lt in light if lt[0] < heavy[0][0]]
    assert len(before) <= 6, f"{len(before)} light tests started before the first heavy one"
    # one model: the session fixture was set up once, in the lane
    assert [pid for _, _, pid, _ in records(env, "model")] == list(lane)
    r.stdout.fnmatch_lines(["*heavy lane: gw? ran 4 heavy tests (*), in collection order "
                            "(no durations cached yet); "
                            "light tests ran on *gw?, gw?, gw?"])
    # the report and the timeline mark the lane
    events = json.loads((pytester.path / "r.json").read_text())["events"]
    lane_workers = {e["worker"] for e in events if e.get("lane")}
    assert len(lane_workers) == 1 and all(e["lane"] for e in events if e["heavy"])
    svg = (pytester.path / "t.svg").read_text()
    assert svg.count('class="row lane"') == 1
    assert f'class="row lane" data-worker="{lane_workers.pop()}"' in svg


DURATIONS = module("""
    SECONDS = [float(s) for s in os.environ["HEAVY_SECONDS"].split(",")]

    @pytest.mark.parametrize("i", range(8))
    def test_light(request, i):
        run("light", request, 0.05)

    @pytest.mark.llm
    @pytest.mark.parametrize("s", SECONDS)
    def test_heavy(request, s):
        run("heavy", request, s)
""")


def test_longest_heavy_test_from_an_earlier_run_starts_first(pytester, env, monkeypatch):
    pytester.makepyfile(test_d=DURATIONS)
    monkeypatch.setenv("HEAVY_SECONDS", "0.1,0.5,0.25")
    r = run(pytester, "-n", "3")
    r.assert_outcomes(passed=11)
    order = [name.split("[")[1] for _, _, _, name in records(env, "heavy")]
    assert order == ["0.1]", "0.5]", "0.25]"]  # nothing known yet: collection order
    env.unlink()
    monkeypatch.setenv("HEAVY_SECONDS", "0.1,0.5,0.25,0.05")  # one new, never timed
    r = run(pytester, "-n", "3")
    r.assert_outcomes(passed=12)
    order = [name.split("[")[1] for _, _, _, name in records(env, "heavy")]
    assert order == ["0.05]", "0.5]", "0.25]", "0.1]"]
    r.stdout.fnmatch_lines(["*heavy lane: gw? ran 4 heavy tests (*), longest first; *"])


def test_two_slots_two_lanes_one_model_each(pytester, env):
    pytester.makepyfile(test_mix=module("""
        @pytest.mark.parametrize("i", range(12))
        def test_light(request, i):
            run("light", request, 0.1)

        @pytest.mark.llm
        @pytest.mark.parametrize("i", range(6))
        def test_heavy(request, model, i):
            run("heavy", request, 0.2)
    """))
    r = run(pytester, "-n", "4", "--heavylock-slots", "2")
    r.assert_outcomes(passed=18)
    heavy = records(env, "heavy")
    lanes = {pid for _, _, pid, _ in heavy}
    assert len(lanes) == 2
    # the lock admits two at once now (slots 2), never three
    assert most_at_once(heavy) <= 2
    assert sorted(pid for _, _, pid, _ in records(env, "model")) == sorted(lanes)


def test_every_test_heavy_one_lane_carries_everything(pytester, env, monkeypatch):
    pytester.makepyfile(test_all=module("""
        @pytest.mark.parametrize("i", range(6))
        def test_any(request, model, i):
            run("heavy", request, 0.05)
    """))
    monkeypatch.setenv("RUN_HEAVY_INTEGRATION", "1")
    r = run(pytester, "-n", "4")
    r.assert_outcomes(passed=6)
    heavy = records(env, "heavy")
    assert len({pid for _, _, pid, _ in heavy}) == 1 and overlaps(heavy) == []
    assert len(records(env, "model")) == 1
    r.stdout.fnmatch_lines(["*every test is heavy (RUN_HEAVY_INTEGRATION*): one lane, gw?, "
                            "ran all 6 tests one at a time (*); the other 3 worker(s) sat idle"])


CRASH = module("""
    import signal

    @pytest.mark.parametrize("i", range(24))
    def test_light(request, i):
        run("light", request, 0.1)

    @pytest.mark.llm
    @pytest.mark.parametrize("i", range(6))
    def test_heavy(request, model, i):
        t0 = time.time()
        record("start", request.node.nodeid, t0, t0)
        if i == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # the lane dies mid-test
        run("heavy", request, 0.2)
""")


def test_lane_worker_killed_mid_test_nothing_lost_nothing_twice(pytester, env):
    pytester.makepyfile(test_crash=CRASH)
    report = pytester.path / "report.json"
    r = run(pytester, "-n", "3", f"--heavylock-report={report}", timeout=90)
    r.assert_outcomes(passed=29, failed=1)
    r.stdout.fnmatch_lines(["*worker 'gw?' crashed while running 'test_crash.py::test_heavy?1?'*"])
    starts = [name for _, _, _, name in records(env, "start")]
    assert sorted(starts) == sorted(f"test_crash.py::test_heavy[{i}]" for i in range(6))
    heavy = records(env, "heavy")
    assert sorted(n for *_, n in heavy) == sorted(
        f"test_crash.py::test_heavy[{i}]" for i in (0, 2, 3, 4, 5))
    assert overlaps(heavy) == []
    light = [n for *_, n in records(env, "light")]
    assert sorted(light) == sorted(set(light)) and len(light) == 24
    # the heavy tests after the crash ran in one new lane
    dead = next(pid for _, _, pid, n in records(env, "start") if n.endswith("[1]"))
    after = {pid for _, _, pid, n in heavy if pid != dead}
    assert len(after) == 1
    # on a live worker (one that ran light tests before the crash), not the replacement
    crash_time = next(a for a, _, _, n in records(env, "start") if n.endswith("[1]"))
    assert any(pid in after and a < crash_time for a, _, pid, _ in records(env, "light"))
    r.stdout.fnmatch_lines(["*worker gw? crashed while running test_crash.py::test_heavy?1?: "
                            "killed by SIGKILL "
                            "(reported as failed); the lane moved on to gw?"])
    events = json.loads(report.read_text())["events"]
    crashed = [e for e in events if e.get("outcome") == "crashed"]
    assert [e["nodeid"] for e in crashed] == ["test_crash.py::test_heavy[1]"]
    # the crashed test is no skipped one (it has no call phase, and was counted so)
    r.stdout.fnmatch_lines(["heavy lane: * ran 6 heavy tests (*s), *"])
    r.stdout.no_fnmatch_line("*heavy lane:*skipped*")


SPREAD = module("""
    @pytest.mark.parametrize("i", range(3))
    def test_light(request, i):
        run("light", request, 0.1)
""")


def _two_heavy_files(pytester):
    heavy = """
        @pytest.mark.llm
        @pytest.mark.parametrize("i", range(3))
        def test_heavy(request, model, i):
            run("heavy", request, 0.2)
    """
    pytester.makepyfile(test_h1=module(heavy), test_h2=module(heavy),
                        test_l1=SPREAD, test_l2=SPREAD)


def test_user_chosen_dist_is_left_alone_and_the_summary_says_a_lane_is_faster(pytester, env):
    _two_heavy_files(pytester)
    r = run(pytester, "-n", "4", "--dist", "loadfile")
    r.assert_outcomes(passed=12)
    heavy = records(env, "heavy")
    assert len({pid for _, _, pid, _ in heavy}) == 2  # one per file: xdist's loadfile
    assert overlaps(heavy) == []  # the lock alone serialized them
    r.stdout.fnmatch_lines(["*--dist loadfile: heavylock left the scheduling to pytest-xdist; "
                            "the lock alone serialized the heavy tests, and workers waited * s "
                            "for it in total. A heavy lane (the default --dist load) would have "
                            "been faster*"])


@pytest.mark.parametrize("how", ["option", "ini", "env"])
def test_lane_off(pytester, env, monkeypatch, how):
    _two_heavy_files(pytester)
    args = ["-n", "4"]
    if how == "option":
        args.append("--heavylock-lane=off")
    elif how == "ini":
        pytester.makeini("[pytest]\nheavylock_lane = off\n")
    else:
        monkeypatch.setenv("HEAVYLOCK_LANE", "off")
    r = run(pytester, *args)
    r.assert_outcomes(passed=12)
    heavy = records(env, "heavy")
    assert len({pid for _, _, pid, _ in heavy}) >= 2 and overlaps(heavy) == []
    r.stdout.fnmatch_lines(["*the lane is off (*); the lock alone serialized the heavy tests*"])


@pytest.mark.parametrize("args, env_value, message", [
    (["--heavylock-lane=maybe"], None, "--heavylock-lane='maybe' is not a yes/no value*"),
    (["--heavylock-slots=0"], None, "--heavylock-slots: invalid number of slots '0'*"),
    ([], "two", "HEAVYLOCK_SLOTS: invalid number of slots 'two'*"),
])
def test_bad_lane_settings_name_their_source(pytester, env, monkeypatch, args, env_value,
                                             message):
    pytester.makepyfile("def test_a(): pass\n")
    if env_value:
        monkeypatch.setenv("HEAVYLOCK_SLOTS", env_value)
    r = run(pytester, *args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines([f"*{message}*"])


def test_a_crashed_heavy_test_queued_again_reaches_a_new_lane(pytester, env):
    """pytest_handlecrashitem may put the crashed test back (as
    pytest-rerunfailures does); it was the last heavy test, so no lane is
    left: one must be found for it, or the run never ends."""
    pytester.makeconftest("""
        import pytest

        @pytest.hookimpl(optionalhook=True)
        def pytest_handlecrashitem(crashitem, report, sched):
            sched.mark_test_pending(crashitem)
            report.outcome = "rerun"
    """)
    pytester.makepyfile(test_rerun=module("""
        import signal

        @pytest.mark.parametrize("i", range(12))
        def test_light(request, i):
            run("light", request, 0.1)

        @pytest.mark.llm
        @pytest.mark.parametrize("i", range(3))
        def test_heavy(request, model, i):
            t0 = time.time()
            record("start", request.node.nodeid, t0, t0)
            flag = os.environ["IV_LOG"] + ".killed"
            if i == 2 and not os.path.exists(flag):
                open(flag, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            run("heavy", request, 0.1)
    """))
    r = run(pytester, "-n", "3", timeout=60)
    r.assert_outcomes(passed=15)
    heavy = records(env, "heavy")
    assert sorted(n for *_, n in heavy) == [f"test_rerun.py::test_heavy[{i}]" for i in range(3)]
    assert overlaps(heavy) == []
    r.stdout.fnmatch_lines(["*worker gw? crashed while running test_rerun.py::test_heavy?2?: "
                            "killed by SIGKILL "
                            "(queued again); the lane moved on to gw?"])


# -- the scheduler alone, driven by fake workers (the protocol xdist's DSession uses)

class FakeNode:
    def __init__(self, wid):
        self.gateway = type("G", (), {"id": wid})()
        self.shutting_down = False
        self.sent = []

    def send_runtest_some(self, indices):
        assert not self.shutting_down, "work sent after shutdown"
        self.sent.extend(indices)

    def shutdown(self):
        self.shutting_down = True


def make_scheduler(n_nodes, heavy, n_tests, past=None, slots=1):
    from types import SimpleNamespace

    from heavylock.scheduler import LaneScheduling

    collection = [f"t.py::test_{i}" for i in range(n_tests)]
    verdicts = SimpleNamespace(read=lambda ids, coll: (
        {collection[i]: "marker" for i in heavy}, None))
    lane = SimpleNamespace(slots=slots, verdicts=verdicts, past_durations=lambda: past or {})
    config = SimpleNamespace(option=SimpleNamespace(maxschedchunk=None),
                             getvalue=lambda name: ["popen"] * n_nodes)
    sched = LaneScheduling(config, None, lane)
    nodes = [FakeNode(f"gw{i}") for i in range(n_nodes)]
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, collection)
    sched.schedule()
    return sched, nodes, collection


def drive(sched, nodes, heavy, done, crash=None):
    """Complete tests worker by worker, first pending first; a worker runs a
    test only once it knows the next one or is shut down.  Checks on every
    step: no worker but a lane ever holds heavy work, a lane at most two."""
    steps = 0
    while sched.has_pending:  # xdist shuts the workers down at tests_finished; they drain
        steps += 1
        assert steps < 10000, "the run never ends"
        progressed = False
        for node in list(sched.node2pending):
            pending = sched.node2pending[node]
            if crash and crash[0] is node and pending and pending[0] == crash[1]:
                sched.remove_node(node)
                crash = None
                progressed = True
                continue
            if pending and (len(pending) >= 2 or node.shutting_down):
                done.append(pending[0])
                sched.mark_test_complete(node, pending[0], 0.01)
                progressed = True
            held = [i for i in sched.node2pending.get(node, []) if i in heavy]
            assert not held or node in sched.lanes, f"{node.gateway.id} holds heavy {held}"
            assert len(held) <= 2
        assert progressed, "every worker is waiting"


def test_scheduler_a_promoted_lane_stays_two_deep_and_nothing_is_lost():
    heavy = set(range(30, 36))
    sched, nodes, coll = make_scheduler(3, heavy, 36)
    assert [n.gateway.id for n in sched.lanes] == ["gw0"]
    assert nodes[0].sent == [30, 31]  # the heavy queue starts at once, two deep
    done = []
    drive(sched, nodes, heavy, done, crash=(nodes[0], 30))
    assert sorted(done) == [i for i in range(36) if i != 30]  # 30 crashed; nothing twice
    assert sched.lane_ids[0] == "gw0" and len(sched.lane_ids) == 2


def test_scheduler_longest_first_unknown_first():
    heavy = {1, 3, 5, 7}
    past = {"t.py::test_3": 0.5, "t.py::test_5": 2.0}
    sched, nodes, coll = make_scheduler(2, heavy, 8, past=past)
    done = []
    drive(sched, nodes, heavy, done)
    assert [i for i in done if i in heavy] == [1, 7, 5, 3]


def test_scheduler_a_lane_takes_light_work_once_no_heavy_test_is_queued():
    """The README's promise: a lane runs light tests when its heavy queue is
    empty.  The exact dispatch after each step, as xdist's scheduler tests
    check it: a lane that never took light work, or that a light share
    counts out, sends other chunks."""
    heavy = {0, 1}
    sched, (gw0, gw1), coll = make_scheduler(2, heavy, 18)
    assert sched.lanes == [gw0]
    assert gw0.sent == [0, 1]  # both heavy tests: the heavy queue is empty now
    assert gw1.sent == [2, 3, 4, 5]
    sched.mark_test_complete(gw0, 0, 0.01)
    # a light chunk sized for two takers: up to 12 queued // 2 // 2 = 3 pending
    assert gw0.sent == [0, 1, 6, 7]
    assert gw1.sent == [2, 3, 4, 5]
    sched.mark_test_complete(gw0, 1, 0.01)
    assert gw0.sent == [0, 1, 6, 7]  # 2 pending: enough
    sched.mark_test_complete(gw0, 6, 0.01)
    assert gw0.sent == [0, 1, 6, 7, 8]
    sched.mark_test_complete(gw1, 2, 0.01)
    assert gw1.sent == [2, 3, 4, 5]
    done = []
    drive(sched, [gw0, gw1], heavy, done)
    assert sorted(done + [0, 1, 6, 2]) == list(range(18))
    assert len([i for i in gw0.sent if i not in heavy]) >= 3


@pytest.mark.parametrize("weights, budget, workers, lanes", [
    ([2**30] * 6, 10 * 2**30, 4, 3),   # six fit, four workers: one keeps the light tests
    ([2**30] * 6, 10 * 2**30, 2, 1),
    ([2**30] * 6, 10 * 2**30, 1, 1),   # one worker is its own lane
    ([2**30] * 2, 10 * 2**30, 4, 2),   # the weights, not the cap, decide
    ([3 * 2**30, 2**30, 2**30], 4 * 2**30, 8, 2),  # heaviest first: 3 G + 1 G
    ([0, 0], 10 * 2**30, 4, 1),        # unknown weights run alone
])
def test_auto_lanes_at_most_workers_minus_one(weights, budget, workers, lanes):
    """--heavylock-slots auto: as many lanes as the heaviest weights fit, but
    never every worker (the first two rows reach the cap)."""
    from heavylock.scheduler import auto_lanes
    assert auto_lanes(weights, budget, workers) == lanes


@pytest.mark.parametrize("dist", ["load", "loadfile"])
def test_explain_is_printed_by_the_controller(pytester, env, dist):
    """`pytest -n 2 --heavylock-explain` printed nothing: the verdicts are
    computed in the workers, whose report hooks reach no terminal.  The
    controller prints the lines of the first worker that collected, once,
    the same lines as a run without xdist (the lane's or xdist's own dist)."""
    pytester.makepyfile(test_a="""
        import pytest
        @pytest.mark.llm
        def test_h(): pass
        def test_l(): pass
    """)
    lines = ["heavylock: 1 of 2 tests take the lock *",
             "  HEAVY  test_a.py::test_h  (marker @pytest.mark.llm*",
             "  light  test_a.py::test_l  (no rule matched)"]
    alone = pytester.runpytest_subprocess("--heavylock-explain", "-p", "no:xdist")
    alone.stdout.fnmatch_lines(lines, consecutive=True)
    r = run(pytester, "-n", "2", f"--dist={dist}", "--heavylock-explain")
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines(lines, consecutive=True)
    assert r.stdout.str().count("HEAVY  test_a.py::test_h") == 1  # once, not per worker
    # and nothing without the option
    r = run(pytester, "-n", "2", f"--dist={dist}")
    assert "HEAVY" not in r.stdout.str()
