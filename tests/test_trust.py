"""Trust: presets and env from a repository's ``tinytown.toml`` run only once the user trusted
that exact file (``tt trust``), remembered in the user's config directory (here the test's
private ``XDG_CONFIG_HOME``, see conftest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.real_redis, pytest.mark.e2e]

# A preset that would do harm if it ran: it leaves a file as proof.
CUSTOM = '''
[agent_clis.helper]
command = ["{python}", "-c", "open('ran-helper', 'w').write('x')"]
env = {{ HELPER_MODE = "fast" }}
'''


def tt(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tinytown.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=90, check=False)


def cloned_town(env: dict[str, str], extra: str = CUSTOM) -> Path:
    """The ``tt_env`` town as if it came with a clone: a tinytown.toml with presets."""
    root = Path(env["TINYTOWN_TOWN"])
    with (root / "tinytown.toml").open("a") as f:
        f.write(extra.format(python=sys.executable))
    return root


def refused_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done
    line = done.stderr.strip()
    assert "\n" not in line, line
    return line


def test_a_custom_preset_runs_only_after_tt_trust_and_again_only_after_an_edit(
    tt_env: dict[str, str], private_config_home: Path
) -> None:
    root = cloned_town(tt_env)
    store = private_config_home / "tinytown" / "trusted"

    line = refused_line(tt("spawn", "alice", "--cli", "helper", env=tt_env))
    assert line.startswith("tt: forbidden: ") and "is not trusted" in line and "run `tt trust`" in line
    assert str(root / "tinytown.toml") in line
    assert not (root / "ran-helper").exists() and not store.exists()
    assert "alice" not in tt("list", env=tt_env).stdout  # refused before anything was written

    trusted = tt("trust", env=tt_env)
    assert trusted.returncode == 0, trusted.stderr
    assert "preset helper:" in trusted.stdout and "HELPER_MODE" in trusted.stdout
    assert store.read_text().split()[1] == str((root / "tinytown.toml").resolve())
    assert os.stat(store).st_mode & 0o777 == 0o600

    spawned = tt("spawn", "alice", "--cli", "helper", "--json", env=tt_env)
    assert spawned.returncode == 0, spawned.stderr
    assert json.loads(spawned.stdout)["cli"] == "helper"
    assert tt("kill", "alice", env=tt_env).returncode == 0

    with (root / "tinytown.toml").open("a") as f:  # the file changes (a pull, an edit)
        f.write("\n# one more line\n")
    line = refused_line(tt("spawn", "bob", "--cli", "helper", env=tt_env))
    assert line.startswith("tt: forbidden: ") and "changed since you trusted it" in line
    assert "run `tt trust`" in line
    assert tt("trust", env=tt_env).returncode == 0
    assert tt("spawn", "bob", "--cli", "helper", env=tt_env).returncode == 0
    assert tt("kill", "bob", env=tt_env).returncode == 0


def test_the_runner_itself_refuses_a_file_changed_after_the_spawn(tt_env: dict[str, str]) -> None:
    root = cloned_town(tt_env)
    assert tt("trust", env=tt_env).returncode == 0
    assert tt("spawn", "carol", "--cli", "helper", env=tt_env).returncode == 0
    assert tt("kill", "carol", env=tt_env).returncode == 0
    with (root / "tinytown.toml").open("a") as f:
        f.write("\n# edited\n")
    restarted = tt("agent", "run", "carol", "--max-rounds", "1", env=tt_env)
    assert "forbidden" in restarted.stderr and "tt trust" in restarted.stderr, restarted.stderr
    assert not (root / "ran-helper").exists()


def test_built_in_presets_work_in_an_untrusted_town_and_a_file_without_presets_needs_no_trust(
    tt_env: dict[str, str], private_config_home: Path
) -> None:
    cloned_town(tt_env)
    spawned = tt("spawn", "dora", "--cli", "scripted", env=tt_env)
    assert spawned.returncode == 0, spawned.stderr
    assert tt("kill", "dora", env=tt_env).returncode == 0
    assert not (private_config_home / "tinytown").exists()


def test_a_file_that_replaces_a_built_in_preset_is_refused_untrusted_and_loud_when_trusted(
    tt_env: dict[str, str]
) -> None:
    replacement = '\n[agent_clis.scripted]\ncommand = ["{python}", "-m", "tinytown_mcp.scripted_agent"]\n'
    root = cloned_town(tt_env, replacement)
    line = refused_line(tt("spawn", "erin", "--cli", "scripted", env=tt_env))
    assert line.startswith("tt: forbidden: ") and "(scripted)" in line
    trusted = tt("trust", env=tt_env)
    assert trusted.returncode == 0
    assert "warning: preset 'scripted'" in trusted.stderr and "REPLACES the built-in" in trusted.stderr
    spawned = tt("spawn", "erin", "--cli", "scripted", env=tt_env)
    assert spawned.returncode == 0, spawned.stderr
    assert "REPLACES the built-in 'scripted' preset" in spawned.stderr  # loud at spawn time too
    assert tt("kill", "erin", env=tt_env).returncode == 0
    assert "REPLACES the built-in" in (root / ".tt" / "logs" / "erin.runner.log").read_text()


def test_default_cli_naming_an_untrusted_preset_is_refused_and_revoke_forgets_the_file(
    tt_env: dict[str, str]
) -> None:
    root = cloned_town(tt_env)
    config = root / "tinytown.toml"
    config.write_text('default_cli = "helper"\n' + config.read_text())
    assert refused_line(tt("spawn", "fred", env=tt_env)).startswith("tt: forbidden: ")
    assert tt("trust", env=tt_env).returncode == 0
    revoked = tt("trust", "--revoke", "--json", env=tt_env)
    assert json.loads(revoked.stdout) == {"file": str(config), "revoked": True}
    line = refused_line(tt("spawn", "fred", env=tt_env))
    assert "is not trusted" in line


def test_trust_is_per_file_path_so_a_copy_of_a_trusted_file_elsewhere_is_not_trusted(
    tt_env: dict[str, str], tmp_path: Path
) -> None:
    root = cloned_town(tt_env)
    assert tt("trust", env=tt_env).returncode == 0
    other = tmp_path / "other-clone"
    other.mkdir()
    (other / "tinytown.toml").write_bytes((root / "tinytown.toml").read_bytes())
    env = tt_env | {"TINYTOWN_TOWN": str(other)}
    assert refused_line(tt("spawn", "gus", "--cli", "helper", env=env)).startswith("tt: forbidden: ")
