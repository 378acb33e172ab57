"""The man page and the shell completions list every option the CLI parses
and every exit code it uses (issue #16: they had drifted: no --slots,
--mem, --budget, URLs or exit 75).

The CLI's getopt arguments and its --help come from one table
(cli/options.c); these tests read the table through --help and fail when a
document misses anything in it, so an option added to the CLI without its
docs fails here."""
import os
import re
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MAN = os.path.join(ROOT, "docs", "heavylock.1")
BASH = os.path.join(ROOT, "completions", "heavylock.bash")
ZSH = os.path.join(ROOT, "completions", "_heavylock")
COMMANDS = ["run", "status", "path", "gguf", "doctor"]


def _help(cli):
    r = subprocess.run([cli, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    return r.stdout


def parse_help(text):
    """([(commands, short or None, [long names], takes an argument)], [exit codes])"""
    options, codes = [], []
    group, section = None, None
    for line in text.splitlines():
        m = re.match(r"Options for (.*):$", line)
        if m:
            group, section = m.group(1), "options"
            continue
        if line == "Exit status:":
            section = "exits"
            continue
        if section == "options":
            m = re.match(r" (?:-(\w), |    )(--[\w-]+(?:, --[\w-]+)*)( <)?", line)
            if m:
                cmds = {"every command": COMMANDS, "heavylock itself": []}.get(group, [group])
                options.append([list(cmds), m.group(1), re.findall(r"--([\w-]+)", m.group(2)),
                                bool(m.group(3))])
            m = re.match(r" {30}\(([a-z ]+)\)$", line)
            if m and options:  # an option shared by several commands names them
                options[-1][0] = m.group(1).split()
        elif section == "exits":
            m = re.match(r" (\d+)\s", line)
            if m:
                codes.append(int(m.group(1)))
    return options, codes


@pytest.fixture(scope="module")
def table(cli):
    options, codes = parse_help(_help(cli))
    assert len(options) >= 15 and {64, 66, 73, 75} <= set(codes), (options, codes)
    return options, codes


def test_help_lists_what_the_cli_parses(cli, table):
    # The help is generated from the table getopt reads; spot-check both
    # ways: every listed option is accepted, an unlisted one is refused.
    options, _ = table
    names = {n for _, _, longs, _ in options for n in longs}
    assert {"slots", "mem", "budget", "ctx", "lock", "nb", "wait"} <= names
    for cmds, short, longs, takes_arg in options:
        for cmd in cmds:
            for name in longs:
                args = [cli, cmd, f"--{name}"] + (["x"] if takes_arg else []) + ["--help"]
                r = subprocess.run(args, capture_output=True, text=True, timeout=30)
                assert "unrecognized option" not in r.stderr, (args, r.stderr)
    r = subprocess.run([cli, "status", "--slots", "2"], capture_output=True, text=True)
    assert r.returncode == 64 and "unrecognized option" in r.stderr


def _man():
    text = open(MAN).read().replace("\\-", "-").replace("\\fB", "").replace("\\fR", "")
    return text


def test_man_page_lists_every_option_exit_code_and_urls(table):
    options, codes = table
    man = _man()
    for _, short, longs, _ in options:
        for name in longs:
            assert re.search(rf"--{re.escape(name)}\b", man), f"man page lacks --{name}"
        if short:
            assert re.search(rf"(?<![\w-])-{short}\b", man), f"man page lacks -{short}"
    exit_status = man.split(".SH EXIT STATUS", 1)[1].split(".SH", 1)[0]
    for code in codes:
        assert re.search(rf"(?<!\d){code}(?!\d)", exit_status), f"man EXIT STATUS lacks {code}"
    assert "postgresql://" in man and "HEAVYLOCK_URL" in man


def _bash_complete(words):
    """COMPREPLY of the real bash completion for `words` (the last is the
    word being completed)."""
    script = (f"source {BASH}\n"
              f"COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}\n"
              "_heavylock; printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_bash_completion_offers_each_commands_options(table):
    options, _ = table
    for cmd in COMMANDS:
        offered = _bash_complete(["heavylock", cmd, "-"])
        for cmds, short, longs, _ in options:
            want = {f"--{n}" for n in longs} | ({f"-{short}"} if short else set())
            if cmd in cmds:
                assert want <= offered, f"bash: heavylock {cmd} - lacks {want - offered}"
            else:
                assert not (want & offered), f"bash: heavylock {cmd} offers {want & offered}"
    top = _bash_complete(["heavylock", "''"])
    assert set(COMMANDS) | {"--help", "--version"} <= top


def test_zsh_completion_lists_each_commands_options(table):
    options, _ = table
    text = open(ZSH).read()
    blocks = dict(re.findall(r"^  (\w+)\)(.*?);;", text, re.S | re.M))
    assert set(COMMANDS) <= set(blocks), blocks.keys()
    for cmd in COMMANDS:
        block = blocks[cmd]
        for cmds, short, longs, _ in options:
            present = [n for n in longs if re.search(rf"--{re.escape(n)}\b", block)]
            if cmd in cmds:
                assert present == longs, f"zsh: {cmd} lacks --{set(longs) - set(present)}"
                if short:
                    assert re.search(rf"(?<![\w-])-{short}\b", block), f"zsh: {cmd} lacks -{short}"
            else:
                assert not present, f"zsh: {cmd} offers {present}"
    assert "--version" in text

