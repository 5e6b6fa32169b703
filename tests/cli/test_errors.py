"""Configuration errors answer at once: one clear message, exit code 2, and nothing heavy started
(no Prefect server, no torch), which is what made them take 13-17 s before."""
from __future__ import annotations


import pytest

from tests.support.cli_probe import run_cli


@pytest.mark.parametrize("case", ["images_dir", "vsr", "out_is_a_file", pytest.param("paper_weights", marks=pytest.mark.slow)])
def test_build_configuration_errors_are_one_clear_message(case, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    argv = {
        "images_dir": ["build", "--images-dir", str(tmp_path / "no-images"), "--captions-json",
                       str(tmp_path / "no-captions.json"), "--out", str(tmp_path / "out")],
        "vsr": ["build", "--demo", "--out", str(tmp_path / "out"), "--vsr", str(tmp_path / "no-vsr.jsonl")],
        "out_is_a_file": ["build", "--demo", "--out", str(a_file)],
        "paper_weights": ["build", "--demo", "--out", str(tmp_path / "out"), "--profile", "paper",
                          "--models-dir", str(tmp_path / "no-models")],
    }[case]
    result = run_cli(*argv)
    expected = {"images_dir": ["source.images_dir", "no-images", "source.captions_json"],
                "vsr": ["selection.vsr_files[0]", "no-vsr.jsonl"],
                "out_is_a_file": ["output.out_dir", "is not a folder"],
                "paper_weights": ["sam_hq_vit_h.pth", "groundingdino_swint_ogc.pth"]}[case]
    assert result["code"] == 2
    assert all(text in result["stderr"] for text in expected), result["stderr"]
    assert "Traceback" not in result["stderr"]
    assert result["stderr"].count("sam_hq_vit_h.pth: ") <= 1          # each missing file named once
    # the paper profile's preflight asks open_clip (which loads torch) what its pretrained tag names
    assert "prefect" not in result["heavy"] and (case == "paper_weights" or result["heavy"] == [])
    assert not (tmp_path / "out").exists()


def test_invalid_values_name_the_field(tmp_path):
    result = run_cli("build", "--demo", "--out", str(tmp_path / "out"), "--shard-size", "0")
    assert result["code"] == 2 and "output.shard_size" in result["stderr"] and result["heavy"] == []


def test_view_rejects_an_impossible_port_and_a_busy_one(tmp_path):
    import socket

    result = run_cli("view", str(tmp_path), "--port", "99999")
    assert result["code"] == 2 and "not a port" in result["stderr"] and "Traceback" not in result["stderr"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("view", str(tmp_path), "--port", str(port))
    assert result["code"] == 2 and "cannot listen" in result["stderr"] and "http://" not in result["stderr"]


@pytest.mark.slow
def test_train_print_config_checks_the_folders(tmp_path):
    result = run_cli("train", "--pretrained-model", str(tmp_path / "no-model"), "--shards",
                     str(tmp_path / "none-*.tar"), "--output-dir", str(tmp_path / "run"), "--print-config")
    assert result["code"] == 2
    assert "no-model" in result["stderr"] and "none-*.tar" in result["stderr"]


def test_version_and_fast_help():
    result = run_cli("--version")
    assert result["code"] == 0 and result["heavy"] == []
    result = run_cli("build", "--help")
    assert result["code"] == 0 and result["heavy"] == []


def test_an_evaluation_that_cannot_start_says_so_once_without_starting_prefect(tmp_path):
    result = run_cli("evaluate", "--model", str(tmp_path / "absent"), "--detector", str(tmp_path / "no-owl"),
                     "--out", str(tmp_path / "eval"))
    assert result["code"] == 2
    err = result["stderr"]
    assert err.count("cannot start the MultiGen evaluation") == 1 and "Traceback" not in err
    assert f"{tmp_path / 'absent'}: no such folder (a local path" in err     # not "download it into the cache"
    assert "prefect" not in result["heavy"]
    assert not (tmp_path / "eval").exists()


def test_a_changed_build_names_the_settings_that_differ_and_the_flag(tmp_path):
    out = tmp_path / "out"
    assert run_cli("build", "--demo", "--no-prefect", "--limit", "2", "--out", str(out))["code"] == 0
    result = run_cli("build", "--demo", "--no-prefect", "--limit", "2", "--out", str(out), "--shard-size", "1")
    assert result["code"] == 2
    assert "other settings (output.shard_size: 500 -> 1" in result["stderr"] and "--overwrite" in result["stderr"]
