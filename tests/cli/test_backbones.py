"""`tlq backbones` lists what `--backbone` takes: timm's pretrained tags by default, bare architectures with
--architectures, and a bad tag at submit points at the listing of that architecture's tags."""

import json

from click.testing import CliRunner

from tlq.cli.main import cli


def invoke(home, *args):
    env = {"TLQ_HOME": str(home), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": "", "HF_HUB_OFFLINE": "1"}
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def test_pretrained_tags_are_listed_and_filtered_like_timm_list_pretrained(home):
    text = invoke(home, "backbones", "--filter", "convnext_tiny.*").stdout
    lines = text.splitlines()
    assert "convnext_tiny.in12k_ft_in1k  (224px, 1000 classes, default)" in lines
    assert "convnext_tiny.fb_in22k  (224px, 21841 classes)" in lines
    assert len(lines) >= 9 and all(line.startswith("convnext_tiny.") for line in lines)
    rows = json.loads(invoke(home, "backbones", "--json").stdout)
    names = [r["name"] for r in rows]
    assert len(names) > 1500 and "resnet50.a1_in1k" in names and "resnet50" not in names


def test_architectures_lists_the_bare_names(home):
    rows = json.loads(invoke(home, "backbones", "--architectures", "--filter", "convnext_t*", "--json").stdout)
    assert {r["name"] for r in rows} >= {"convnext_tiny", "convnext_tiny_hnf"}
    assert all("." not in r["name"] for r in rows)
    tiny = next(r for r in rows if r["name"] == "convnext_tiny")
    assert tiny == {"name": "convnext_tiny", "source": "timm", "description": "pretrained weights"}


def test_a_pattern_that_only_architectures_match_says_so(home):
    text = invoke(home, "backbones", "--filter", "test_coat*").stdout.strip()
    assert text.startswith("no pretrained tag matches 'test_coat*', but 1 architecture(s) do")
    assert "`tlq backbones --architectures --filter 'test_coat*'`" in text and "--no-pretrained" in text


def test_a_bad_tag_at_submit_points_at_the_architectures_tags_with_close_matches(home, digits_dir):
    args = ["submit", "feature-extract", "--backbone", "resnet50.a1_in1kk", "--data", digits_dir]
    result = invoke(home, *args)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "unknown pretrained tag 'a1_in1kk' for resnet50; did you mean resnet50.a1_in1k" in line
    assert "run `tlq backbones --filter 'resnet50.*'` to list its tags" in line
    bogus = invoke(home, "submit", "feature-extract", "--backbone", "resnet50.bogus", "--data", digits_dir)
    assert "`tlq backbones --filter 'resnet50.*'`" in bogus.stderr
    typo = invoke(home, "submit", "feature-extract", "--backbone", "resnt50", "--data", digits_dir)
    assert (
        "did you mean resnet50" in typo.stderr and "`tlq backbones --architectures --filter 'resnet*'`" in typo.stderr
    )
