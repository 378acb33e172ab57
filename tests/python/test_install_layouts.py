"""The `heavylock` command works wherever pip puts the package (issue #16).

One wheel per session, built from this checkout and repaired by auditwheel
as `make dist` does (the repair is what wrapped the CLI in a shim that
exec'd a path under sysconfig's platlib), then installed four ways with a
real pip: a venv, --prefix, --user (a temporary HOME / PYTHONUSERBASE) and
--target (PYTHONPATH).  Each installed `heavylock` must print its version
and run a command under a lock."""
import glob
import os
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PYVER = f"python{sys.version_info[0]}.{sys.version_info[1]}"


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONUSERBASE", "PYTHONHOME", "VIRTUAL_ENV",
                        "HEAVYLOCK_CLI", "HEAVYLOCK_PATH", "LOCAL_MODEL_PATH")}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    if not os.path.exists(os.path.join(ROOT, "meson.build")):
        pytest.skip("not run from a source checkout (no meson.build to build a wheel from)")
    out = tmp_path_factory.mktemp("wheel")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
          "-w", str(out / "raw"), ROOT], env=env, cwd=str(out))
    raw = glob.glob(str(out / "raw" / "*.whl"))
    assert len(raw) == 1, raw
    _run([sys.executable, "-m", "auditwheel", "repair", "-w", str(out / "repaired"), raw[0]],
         env=env)
    (whl,) = glob.glob(str(out / "repaired" / "*.whl"))
    return whl


def _check(heavylock, tmp_path, env):
    """The installed command: not the build tree's, it runs, and it locks."""
    assert os.path.exists(heavylock), heavylock
    r = _run([heavylock, "--version"], env=env, cwd=str(tmp_path))
    assert r.stdout.startswith("heavylock from heavylock "), r.stdout
    lock = tmp_path / ".llm_load.lock"
    _run([heavylock, "run", "--lock", str(lock), "--", "true"], env=env, cwd=str(tmp_path))
    r = subprocess.run([heavylock, "status", "--lock", str(lock), "--json"], env=env,
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and '"held": false' in r.stdout, (r.returncode, r.stdout, r.stderr)


def test_cli_runs_from_a_venv_install(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
          "--no-deps", "--no-index", wheel])
    _check(str(venv / "bin" / "heavylock"), tmp_path, _clean_env())


def test_cli_runs_from_a_prefix_install(wheel, tmp_path):
    prefix = tmp_path / "prefix"
    # --ignore-installed: this venv has the package installed already
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
          "--ignore-installed", "--prefix", str(prefix), wheel])
    site = prefix / "lib" / PYVER / "site-packages"
    assert (site / "heavylock" / "__init__.py").exists()
    _check(str(prefix / "bin" / "heavylock"), tmp_path, _clean_env(PYTHONPATH=str(site)))


def test_cli_runs_from_a_user_install(wheel, tmp_path):
    # --user is refused inside a venv: the base interpreter installs it.
    base = os.path.join(sys.base_prefix, "bin", f"python{sys.version_info[0]}")
    if not os.access(base, os.X_OK) or subprocess.run(
            [base, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip(f"the base interpreter {base} has no pip for a --user install")
    home, userbase = tmp_path / "home", tmp_path / "userbase"
    home.mkdir()
    env = _clean_env(HOME=str(home), PYTHONUSERBASE=str(userbase), PIP_USER="1",
                     PIP_BREAK_SYSTEM_PACKAGES="1", PIP_NO_WARN_SCRIPT_LOCATION="1")
    _run([base, "-m", "pip", "install", "-q", "--user", "--no-deps", "--no-index", wheel],
         env=env)
    site = subprocess.run([base, "-c", "import site; print(site.getusersitepackages())"],
                          env=env, capture_output=True, text=True).stdout.strip()
    assert site.startswith(str(userbase)) and os.path.isdir(os.path.join(site, "heavylock"))
    assert not site.startswith(sysconfig.get_path("platlib"))
    _check(str(userbase / "bin" / "heavylock"), tmp_path, env)


def test_cli_runs_from_a_target_install(wheel, tmp_path):
    target = tmp_path / "target"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
          "--target", str(target), wheel])
    _check(str(target / "bin" / "heavylock"), tmp_path, _clean_env(PYTHONPATH=str(target)))
