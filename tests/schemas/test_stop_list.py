"""The stop-list follows the profile: the paper profile reproduces the authors' data, who had none."""
from tests.support.testkit import demo_config
from tokencompose.schemas.config import DEFAULT_STOP_LIST
from tokencompose.tasks.shards.build import ShardBuilder


def _in_force(config) -> frozenset[str]:
    return ShardBuilder(config, backends=None, provenance=None).stop_list  # type: ignore[arg-type]  # the stop-list needs neither


def test_paper_profile_has_no_stop_list_unless_asked(tmp_path):
    paper = demo_config(tmp_path / "o", profile="paper")
    assert paper.nouns.stop_list is None and _in_force(paper) == frozenset()
    assert paper.content_dict()["nouns"]["stop_list"] == []
    asked = demo_config(tmp_path / "o", profile="paper", nouns={"stop_list": ["Front", " top "]})
    assert _in_force(asked) == {"front", "top"} and asked.config_hash() != paper.config_hash()


def test_offline_and_hybrid_keep_the_default_stop_list(tmp_path):
    for profile in ("offline", "hybrid"):
        config = demo_config(tmp_path / "o", profile=profile)
        assert _in_force(config) == frozenset(DEFAULT_STOP_LIST)
        assert config.content_dict()["nouns"]["stop_list"] == sorted(set(DEFAULT_STOP_LIST))
    none = demo_config(tmp_path / "o", nouns={"stop_list": []})
    assert _in_force(none) == frozenset()
    # "the profile's default" and the default written out are one configuration
    spelled = demo_config(tmp_path / "o", nouns={"stop_list": list(DEFAULT_STOP_LIST)})
    assert spelled.config_hash() == demo_config(tmp_path / "o").config_hash()


def test_a_plural_matches_its_singular_on_the_stop_list():
    from tokencompose.tasks.nouns.extraction import NounPhrase, is_stop_listed

    stop_list = frozenset(DEFAULT_STOP_LIST)

    def stopped(text):
        return is_stop_listed(NounPhrase(text, 0, len(text)), stop_list)

    assert stopped("pieces") and stopped("Sides") and stopped("halves") and stopped("close ups")
    assert stopped("photograph") and stopped("motion blur") and stopped("others")
    # only the whole phrase counts: a "picture frame" is a thing, "glasses" are not a "glass" on the list
    assert not stopped("picture frame") and not stopped("glasses") and not stopped("dog")
