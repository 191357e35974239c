"""servicefactory.toml: every bad file is one line naming the file and line, exit 2, no traceback;
a good one becomes the Specs `up` hands the supervisor (env_file then env, environments, cwd)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from servicefactory import appfile
from servicefactory.appfile import AppFileError
from support import Cli

SERVICE = """
from servicefactory import Service

@Service.API.endpoint(port=0)
@Service.policy(stop_timeout=3)
class Api(Service.base):
    def loop(self):
        self.sleep(1)
"""


def write(directory: Path, text: str, name: str = "servicefactory.toml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(directory: Path, text: str, **options) -> str:
    write(directory, text)
    with pytest.raises(AppFileError) as caught:
        appfile.load(directory / "servicefactory.toml", **options)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("text, expected", [
    # a TOML syntax error: tomllib's line, said once
    ("[services.api]\ntarget = \"svc:Api\"\nport = = 3\n", r"servicefactory.toml:3: .*not valid TOML"),
    ("[services.api]\ntarget = \"svc:Api\"\nprot = 8080\n",
     r"servicefactory.toml:3: unknown key 'prot' in \[services.api\]; did you mean 'port'\?"),
    ("[services.api]\ntarget = \"svc:Api\"\n\n[servics.web]\ncommand = [\"true\"]\n",
     r"servicefactory.toml:4: unknown key 'servics'; did you mean 'services'\?"),
    ("[services.api]\ntarget = \"svc:Api\"\ndepends_on = { redis = \"ready\" }\n",
     r"servicefactory.toml:3: \[services.api\] depends on 'redis', which is not a service in this file"),
    ("[services.a]\ncommand = [\"true\"]\ndepends_on = [\"b\"]\n\n[services.b]\ncommand = [\"true\"]\n"
     "depends_on = { a = \"completed\" }\n", r"servicefactory.toml:3: dependency cycle: a -> b -> a"),
    ("[services.api]\ntarget = \"nosuchmodule:Api\"\n",
     r"servicefactory.toml:2: target of \[services.api\]: no module named 'nosuchmodule'"),
    ("[services.api]\ntarget = \"svc:Nope\"\n", r"servicefactory.toml:2: target of \[services.api\]: svc has no 'Nope'"),
    ("[services.api]\ntarget = \"svc:Api\"\nport = \"80\"\n",
     r"servicefactory.toml:3: port in \[services.api\] must be a whole number from 0 to 65535, not '80'"),
    ("[services.api]\ntarget = \"svc:Api\"\nrestart = \"sometimes\"\n",
     r"servicefactory.toml:3: restart in \[services.api\] must be one of 'on-failure', 'always', 'no'"),
    ("[services.job]\ncommand = [\"true\"]\nstop_signal = \"SIGNOPE\"\n",
     r"servicefactory.toml:3: stop_signal in \[services.job\] must name a signal"),
    ("[services.job]\ncommand = [\"no-such-program-here\"]\n",
     r"servicefactory.toml:2: command of \[services.job\]: 'no-such-program-here' is not an executable program"),
    ("[services.job]\ncommand = [\"true\"]\ndepends_on = { api = \"finished\" }\n\n[services.api]\ntarget = \"svc:Api\"\n",
     r"servicefactory.toml:3: depends_on.api in \[services.job\] must be one of 'started', 'ready', 'completed', 'healthy'"),
    ("[services.job]\ncommand = [\"true\"]\nready = { port = 80, log = \"x\" }\n",
     r"servicefactory.toml:3: ready in \[services.job\] takes exactly one of port, command or log, not port and log"),
    ("[services.job]\ncommand = [\"true\"]\nready = { log = \"(\" }\n",
     r"servicefactory.toml:3: ready.log in \[services.job\] is not a regular expression"),
    ("[services.job]\ntarget = \"svc:Api\"\ncommand = [\"true\"]\n",
     r"servicefactory.toml:1: \[services.job\] needs either target .* not both"),
    ("[services.job]\nrestart = \"no\"\n", r"servicefactory.toml:1: \[services.job\] needs either target .* not neither"),
    ("[services.job]\ncommand = [\"true\"]\nenv_file = \"missing.env\"\n",
     r"servicefactory.toml: env_file .*missing.env does not exist"),
    ("[services._x]\ncommand = [\"true\"]\n", r"servicefactory.toml:1: \[services._x\]: the name '_x' is reserved"),
    ("[settings]\nbackof = 1\n[services.job]\ncommand = [\"true\"]\n",
     r"servicefactory.toml:2: unknown key 'backof' in \[settings\]; did you mean 'backoff'\?"),
    ("title = \"x\"\n", r"servicefactory.toml:1: unknown key 'title'"),
    ("", r"servicefactory.toml: no services"),
    ("[services.a]\ncommand = \"\"\n", r"servicefactory.toml:2: command in \[services.a\] must be a list of strings "
                                      r"\(the program first\), not ''"),
    ("[services.a]\ncommand = []\n", r"servicefactory.toml:2: .* not an empty list"),
    ("[services.a]\ncommand = [\"true\"]\n[environments.x]\nservices = 1\n",
     r"servicefactory.toml:4: services in \[environments.x\] must be a table"),
    ("[services.a]\ncommand = [\"true\"]\n[environments.x]\nservice = {}\n",
     r"servicefactory.toml:4: unknown key 'service' in \[environments.x\]; did you mean 'services'\?"),
    ("[services.api]\ncommand = [\"true\"]\ninstances = 65\n",
     r"servicefactory.toml:3: instances in \[services.api\] must be a whole number from 1 to 64, not 65"),
])
def test_each_bad_file_is_one_line_naming_the_file_and_line(tmp_path, monkeypatch, text, expected):
    import re

    (tmp_path / "svc.py").write_text(SERVICE)
    monkeypatch.chdir(tmp_path)
    message = error_of(tmp_path, text)
    assert re.search(expected, message), message


def test_a_missing_file_and_an_unknown_environment_say_so(tmp_path):
    with pytest.raises(AppFileError, match=r"^nowhere.toml: no such file"):
        appfile.load("nowhere.toml")
    write(tmp_path, '[services.job]\ncommand = ["true"]\n[environments.prod.services.job]\nrestart = "no"\n')
    with pytest.raises(AppFileError, match=r"no environment 'staging' \(environments defined: prod\)"):
        appfile.load(tmp_path / "servicefactory.toml", "staging")


def test_env_file_then_env_over_the_supervisors_environment_and_cwd_relative_to_the_file(tmp_path):
    (tmp_path / "backend").mkdir()
    (tmp_path / ".env").write_text('# comment\nexport A=from-file\nB="two words"\nC=plain # trailing\n'
                                   "D='single'\nE=\"line\\nbreak\"\n")
    write(tmp_path, """
        [services.job]
        command = ["true"]
        env_file = ".env"
        env = { B = "from-env", N = 3, T = true }
        cwd = "backend"
        stop_signal = "INT"
    """)
    app = appfile.load(tmp_path / "servicefactory.toml")
    (spec,) = app.specs
    assert spec.env == {"A": "from-file", "B": "from-env", "C": "plain", "D": "single", "E": "line\nbreak",
                        "N": "3", "T": "true"}
    assert spec.cwd == str(tmp_path / "backend") and spec.command == ["true"] and spec.stop_signal == "SIGINT"
    assert app.settings.keep_going


def test_a_bad_env_file_line_names_that_file_and_line(tmp_path):
    (tmp_path / "bad.env").write_text("A=1\nthis is not an assignment\n")
    write(tmp_path, '[services.job]\ncommand = ["true"]\nenv_file = "bad.env"\n')
    with pytest.raises(AppFileError, match=r"bad.env:2: not NAME=value"):
        appfile.load(tmp_path / "servicefactory.toml")


def test_an_environment_is_merged_over_the_file_and_its_errors_point_at_its_own_lines(tmp_path, monkeypatch):
    (tmp_path / "svc.py").write_text(SERVICE)
    monkeypatch.chdir(tmp_path)
    write(tmp_path, """
        [settings]
        backoff = 0.5

        [services.api]
        target = "svc:Api"
        port = 8080
        env = { MODE = "dev", KEEP = "yes" }

        [environments.prod.settings]
        max_failures = 2

        [environments.prod.services.api]
        port = 80
        env = { MODE = "prod" }

        [environments.broken.services.api]
        prot = 80
    """)
    dev = appfile.load(tmp_path / "servicefactory.toml")
    assert dev.specs[0].port == 8080 and dev.specs[0].env == {"MODE": "dev", "KEEP": "yes"}
    prod = appfile.load(tmp_path / "servicefactory.toml", "prod")
    assert prod.specs[0].port == 80 and prod.specs[0].env == {"MODE": "prod", "KEEP": "yes"}
    assert prod.settings.backoff == 0.5 and prod.settings.max_failures == 2
    assert prod.specs[0].stop_timeout == 3  # the class's policy fills what the file leaves out
    with pytest.raises(AppFileError, match=r"servicefactory.toml:18: unknown key 'prot'"):
        appfile.load(tmp_path / "servicefactory.toml", "broken")


def test_a_user_other_than_ours_needs_root(tmp_path):
    import os
    import pwd

    write(tmp_path, '[services.job]\ncommand = ["true"]\nuser = "nobody-at-all-here"\n')
    with pytest.raises(AppFileError, match=r"servicefactory.toml:3: user of \[services.job\]: no user named"):
        appfile.load(tmp_path / "servicefactory.toml")
    if os.geteuid() == 0:
        write(tmp_path, '[services.job]\ncommand = ["true"]\nuser = "nobody"\n')
        assert appfile.load(tmp_path / "servicefactory.toml").specs[0].user == "nobody"
    else:
        other = next(p.pw_name for p in pwd.getpwall() if p.pw_uid != os.geteuid())
        write(tmp_path, f'[services.job]\ncommand = ["true"]\nuser = "{other}"\n')
        with pytest.raises(AppFileError, match="needs servicefactory to run as root"):
            appfile.load(tmp_path / "servicefactory.toml")


@pytest.mark.parametrize("command", [["up"], ["up", "--dry-run"], ["down"]])
def test_the_cli_prints_one_line_exits_2_and_no_traceback(tmp_path, command):
    sf = Cli(tmp_path)
    sf.write("servicefactory.toml", '[services.api]\ntarget = "svc:Api"\nprot = 1\n')
    sf.write("svc.py", SERVICE)
    result = sf(*command)
    assert result.returncode == 2, result
    assert result.stderr == ("error: servicefactory.toml:3: unknown key 'prot' in [services.api]; "
                             "did you mean 'port'?\n"), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    sf.write("app.toml", '[services.a]\ncommand = ["true"]\ndepends_on = ["a"]\n')
    result = sf(*command, "-f", "app.toml")
    assert result.returncode == 2 and result.stderr == "error: app.toml:3: [services.a] depends on itself\n", result


def test_a_module_that_raises_shows_the_users_traceback_then_one_line_with_the_file(tmp_path):
    sf = Cli(tmp_path)
    sf.write("boom.py", "raise RuntimeError('broken at import')\n")
    sf.write("servicefactory.toml", '[services.api]\ntarget = "boom:Api"\n')
    result = sf("up")
    assert result.returncode == 1, result
    assert "RuntimeError: broken at import" in result.stderr  # the user's own error, with their traceback
    assert result.stderr.splitlines()[-1].startswith("error: servicefactory.toml:2: [services.api] importing 'boom'")


def test_dry_run_prints_the_start_order_and_who_waits_for_whom(tmp_path):
    sf = Cli(tmp_path)
    sf.write("svc.py", SERVICE)
    sf.write("servicefactory.toml", """
        [services.api]
        target = "svc:Api"
        depends_on = { redis = "ready", migrate = "completed" }

        [services.migrate]
        command = ["true"]
        restart = "no"
        depends_on = ["redis"]

        [services.redis]
        command = ["sleep", "60"]
    """)
    result = sf("up", "--dry-run")
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == ["start order: redis -> migrate -> api",
                                          "api waits for redis (ready), migrate (completed)",
                                          "migrate waits for redis (ready)"]
    assert sf.status() == []  # nothing started


def test_a_cycle_an_environment_closes_is_named_with_a_line_of_a_service_in_it(tmp_path):
    write(tmp_path, """\
        [services.a]
        command = ["true"]
        depends_on = ["b"]

        [services.b]
        command = ["true"]
        depends_on = { c = "completed" }

        [services.c]
        command = ["true"]

        [environments.loop.services.c]
        depends_on = ["a"]
    """)
    assert appfile.load(tmp_path / "servicefactory.toml").graph == {"a": ["b"], "b": ["c"], "c": []}
    with pytest.raises(AppFileError, match=r"servicefactory.toml:3: dependency cycle: a -> b -> c -> a$"):
        appfile.load(tmp_path / "servicefactory.toml", "loop")


def test_the_dashboard_options_of_run_have_settings_keys(tmp_path):
    write(tmp_path, '[settings]\ndashboard_port = 0\ndashboard_host = "127.0.0.1"\n[services.a]\ncommand = ["true"]\n')
    settings = appfile.load(tmp_path / "servicefactory.toml").settings
    assert (settings.dashboard_port, settings.dashboard_host) == (0, "127.0.0.1")
    write(tmp_path, '[settings]\ndashboard_port = 70000\n[services.a]\ncommand = ["true"]\n')
    with pytest.raises(AppFileError, match=r"servicefactory.toml:2: dashboard_port in \[settings\] must be a whole"):
        appfile.load(tmp_path / "servicefactory.toml")


def test_a_file_and_an_env_file_saved_with_a_bom_and_crlf_line_ends_read_as_any_other(tmp_path):
    (tmp_path / ".env").write_bytes(b"\xef\xbb\xbfA=one\r\nB=two\r\n")
    (tmp_path / "servicefactory.toml").write_bytes(b'\xef\xbb\xbf[services.job]\r\ncommand = ["true"]\r\n'
                                                   b'env_file = ".env"\r\n')
    assert appfile.load(tmp_path / "servicefactory.toml").specs[0].env == {"A": "one", "B": "two"}
