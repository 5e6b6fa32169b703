import json
import subprocess
import sys

import pytest

from tokencompose.cli import main


def test_build_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["build", "--help"])
    assert exit_.value.code == 0
    assert "--demo" in capsys.readouterr().out


def test_invalid_configuration_exits_2_and_names_the_field(tmp_path, capsys):
    assert main(["build", "--demo", "--out", str(tmp_path / "o"), "--shard-size", "0"]) == 2
    assert "output.shard_size" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_source_stops_before_work(tmp_path, capsys):
    code = main(["build", "--out", str(tmp_path / "o"), "--images-dir", str(tmp_path), "--captions-json",
                 str(tmp_path / "captions.json"), "--no-prefect"])
    assert code == 2 and "captions.json does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_build_through_the_installed_command(tmp_path):
    run = subprocess.run([sys.executable, "-m", "tokencompose", "build", "--demo", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "o" / "sizes.json").read_text()) == {"shard-000000.tar": 8}
