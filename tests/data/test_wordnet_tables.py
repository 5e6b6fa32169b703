"""The WordNet tables are generated, not edited: regenerating them from WordNet 3.0 gives the shipped bytes."""
import subprocess
import sys

import pytest

from tokencompose.tasks.grounding.human import WORDNET_NOUNS, WORDNET_UNIONS

pytestmark = pytest.mark.slow


def test_regenerating_the_wordnet_tables_gives_the_shipped_ones(tmp_path):
    subprocess.run([sys.executable, "-W", "ignore", "-m", "tokencompose.data.make_wordnet_tables", "--out",
                    str(tmp_path)], check=True, capture_output=True, timeout=600)
    for shipped in (WORDNET_NOUNS, WORDNET_UNIONS):
        assert (tmp_path / shipped.name).read_bytes() == shipped.read_bytes(), shipped.name
