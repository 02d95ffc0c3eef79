"""feature-maps on a photo (scikit-image's cat) with a tiny timm model and on a model tlq fine-tuned itself,
checked against timm's own ``features_only`` model; the layer choice refused at submit naming the layers that
exist; `tlq layers`."""

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from tests.support import run_job_here
from tlq.cli.main import cli
from tlq.config import Settings
from tlq.env import Environment
from tlq.jobs.spec import JobSpec
from tlq.ml.feature_maps import tiles_in_png

RESNET_LAYERS = ["act1", "layer1", "layer2", "layer3", "layer4"]  # test_resnet's feature_info
VGG16_LAYERS = "features.3, features.8, features.15, features.22, features.29, features.30"


@pytest.fixture(scope="module")
def cat(tmp_path_factory) -> Path:
    """scikit-image's photo of Chelsea the cat, as a JPEG file (451 x 300)."""
    from skimage.data import chelsea

    path = tmp_path_factory.mktemp("photos") / "chelsea.jpg"
    Image.fromarray(chelsea()).save(path, quality=90)
    return path


def offline(home: Path) -> dict[str, str]:
    return {"TLQ_HOME": str(home), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": "", "HF_HUB_OFFLINE": "1"}


def read_channels(job) -> list[dict]:
    with open(job["files"]["channels"]) as fh:
        return list(csv.DictReader(fh))


def test_a_layers_channels_are_ranked_by_mean_and_the_strongest_drawn_beside_the_photo(tmp_path, cat):
    env = Environment(Settings.load(home=tmp_path / "home", environ={}))
    spec = JobSpec(
        task="feature-maps",
        backbone="test_resnet",
        pretrained=False,
        params={"image": str(cat), "layer": "layer3", "top": 8},
    )
    job = run_job_here(env, spec)
    rows = read_channels(job)
    assert sorted(int(r["channel"]) for r in rows) == list(range(192))
    assert [int(r["rank"]) for r in rows] == list(range(1, 193))
    means = [float(r["mean"]) for r in rows]
    assert means == sorted(means, reverse=True) and means[0] > means[-1]
    assert all(float(r["max"]) >= float(r["mean"]) and 0 <= float(r["positive_share"]) <= 1 for r in rows)
    firing = sum(float(r["max"]) > 0 for r in rows) / len(rows)
    assert 0 < firing <= 1 and job["metrics"]["active_channels"] == pytest.approx(firing)
    assert job["metrics"]["top_channel"] == int(rows[0]["channel"])

    # The grid draws the 8 strongest channels, best first, beside the photo (a readable PNG).
    with Image.open(job["files"]["feature_maps"]) as png:
        assert png.format == "PNG" and png.width > png.height >= 300
    tiles = tiles_in_png(job["files"]["feature_maps"])
    assert tiles["channels"] == [int(r["channel"]) for r in rows[:8]]
    assert "layer3" in tiles["title"]

    # layers.json names every layer --layer can choose; layer3 of a 160-pixel input is 10 x 10 (reduction 16).
    layers = json.loads(Path(job["files"]["layers"]).read_text())
    assert [entry["name"] for entry in layers["layers"]] == RESNET_LAYERS
    assert [entry["channels"] for entry in layers["layers"]] == [32, 32, 48, 192, 96]
    assert [entry["from_end"] for entry in layers["layers"]] == [-5, -4, -3, -2, -1]
    chosen = layers["chosen"]
    assert (chosen["name"], chosen["index"], chosen["height"], chosen["width"]) == ("layer3", 3, 10, 10)


def test_a_model_tlq_trained_gives_the_maps_timms_features_only_model_gives(trained):
    import timm
    import torch

    image = sorted((trained.val / "3").glob("*.png"))[0]
    spec = JobSpec(task="feature-maps", backbone=trained.backbone, params={"image": str(image), "top": 4})
    job = run_job_here(trained.env, spec)
    rows = read_channels(job)
    assert job["metrics"]["layer_index"] == 4 and len(rows) == 96  # the default: the last stage, layer4

    # The finetune job's folder is a timm model folder: timm alone rebuilds it as a features_only model, with the
    # preprocessing the model was trained with, and its layer4 maps have the channel means the job recorded.
    folder = Path(trained.job["files"]["model"]).parent
    reference = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True, out_indices=(4,))
    config = timm.data.resolve_data_config({}, model=reference)
    x = timm.data.create_transform(**config, is_training=False)(Image.open(image).convert("RGB"))[None]
    with torch.no_grad():
        (maps,) = reference.eval()(x)
    expected = maps[0].flatten(1).mean(1)
    recorded = torch.tensor([float(r["mean"]) for r in sorted(rows, key=lambda r: int(r["channel"]))])
    assert torch.allclose(recorded, expected, rtol=1e-4, atol=1e-6)
    assert int(rows[0]["channel"]) == int(expected.argmax())
    assert tiles_in_png(job["files"]["feature_maps"])["channels"] == [int(r["channel"]) for r in rows[:4]]


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        ("conv9", f"unknown --layer 'conv9' for vgg16; pass one of {VGG16_LAYERS} or an index from -6 to 5"),
        ("-7", "--layer -7 is out of range for vgg16"),
        ("-0", "--layer -0 is the first layer, 0; pass -1 for the last"),  # not "the last counting from the end"
    ],
)
def test_a_layer_vgg16_lacks_is_refused_at_submit_naming_its_layers(tmp_path, cat, layer, expected):
    args = ["submit", "feature-maps", "--backbone", "vgg16", "--no-pretrained", "--image", str(cat), "--layer"]
    result = CliRunner().invoke(cli, [*args, layer], env=offline(tmp_path))
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and "`tlq layers vgg16`" in result.stderr and result.stderr.count("\n") == 1
    assert json.loads(CliRunner().invoke(cli, ["jobs", "--json"], env=offline(tmp_path)).stdout) == []
    queued = CliRunner().invoke(cli, [*args, "features.22", "--json"], env=offline(tmp_path))
    assert queued.exit_code == 0, queued.output
    assert json.loads(queued.stdout)["params"]["layer"] == "features.22"


def test_tlq_layers_lists_the_layers_of_a_timm_name_and_of_a_job_model(trained):
    env = offline(trained.home)
    listed = CliRunner().invoke(cli, ["layers", "vgg16"], env=env)
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["index", "from", "end", "name", "channels", "reduction"]
    assert [line.split() for line in lines[1:]][3] == ["3", "-3", "features.22", "512", "8"]
    assert ", ".join(line.split()[2] for line in lines[1:]) == VGG16_LAYERS
    found = json.loads(CliRunner().invoke(cli, ["layers", trained.backbone, "--json"], env=env).stdout)
    assert [(entry["name"], entry["channels"], entry["reduction"]) for entry in found] == [
        ("act1", 32, 2),
        ("layer1", 32, 4),
        ("layer2", 48, 8),
        ("layer3", 192, 16),
        ("layer4", 96, 32),
    ]


def test_an_image_that_is_a_folder_or_not_an_image_is_refused_in_one_line(tmp_path, cat):
    args = ["submit", "feature-maps", "--backbone", "test_resnet", "--no-pretrained", "--image"]
    (tmp_path / "notes.png").write_text("not a picture")
    Image.new("1", (10_000, 10_000)).save(tmp_path / "huge.png")  # 100 megapixels in 12 kB: PIL's bomb limit
    for image, expected in (
        (cat.parent, f"{cat.parent} is a folder; pass the path of one image file in it"),
        (tmp_path / "notes.png", "cannot be read: not an image; pass a PNG or JPEG image"),
        (tmp_path / "huge.png", "too many pixels to decode safely (100000000 pixels, over 89478485); shrink it"),
    ):
        result = CliRunner().invoke(cli, [*args, str(image)], env=offline(tmp_path))
        assert result.exit_code == 2 and expected in result.stderr and result.stderr.count("\n") == 1, result.output
