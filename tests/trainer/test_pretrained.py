"""Pretrained models with no hub: `edgetune cache-model` seeds the standard Hugging Face cache from the
packaged all-MiniLM-L6-v2, and the real loading code (transformers' from_pretrained on the hub id) finds it
there, offline. Each load runs in a subprocess, because huggingface_hub reads HF_HOME, HF_ENDPOINT and
HF_HUB_OFFLINE once, when first imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hfhub
import pytest

from edgetune_trainer.model.hf_cache import PACKAGED_MODELS, packaged_model_folder

pytestmark = pytest.mark.trainer

MINILM = hfhub.MINILM
REPO_FOLDER = "models--sentence-transformers--all-MiniLM-L6-v2"

# Loads hf://REPO with the trainer's own code, and reports what it got: the class, the hub decision, the
# tokenizer's vocabulary, and whether one pretrained tensor equals the packaged file's.
LOAD = """
import json, sys
from safetensors.torch import load_file
from edgetune_trainer.config import ModelSpec
from edgetune_trainer.model import hf_cache
from edgetune_trainer.model.loading import ModelLoadError, load_model

repo, pretrained, package_weights = sys.argv[1], sys.argv[2] == "true", sys.argv[3]
spec = ModelSpec(source=f"hf://{repo}", task="text-classification", num_labels=3, pretrained=pretrained)
try:
    loaded = load_model(spec)
except ModelLoadError as err:
    print(json.dumps({"error": str(err)}))
    sys.exit(0)
name = "encoder.layer.0.attention.self.query.weight"
same = bool((loaded.model.bert.get_parameter(name) == load_file(package_weights)[name]).all())
print(json.dumps({
    "class": type(loaded.model).__name__,
    "hubReachable": hf_cache.hub_reachable(),
    "vocab": len(loaded.tokenizer),
    "labels": loaded.model.config.num_labels,
    "pretrainedTensor": same,
}))
"""


def cache_model(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return hfhub.cache_model(hfhub.hub_free_env(home), *args)


def load_in_subprocess(repo: str, home: Path, *, pretrained: bool = True, offline_flag: bool = False) -> dict:
    """The hub is unreachable: a closed loopback port as HF_ENDPOINT (refused at once), or HF_HUB_OFFLINE."""
    env = hfhub.hub_free_env(home)
    if offline_flag:
        env["HF_HUB_OFFLINE"] = "1"
        del env["HF_ENDPOINT"]
    weights = str(packaged_model_folder(MINILM) / "model.safetensors")
    done = subprocess.run(
        [sys.executable, "-c", LOAD, repo, "true" if pretrained else "false", weights],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("hf-home")
    done = cache_model(MINILM, home=home)
    assert done.returncode == 0, done.stderr
    return home


def test_cache_model_writes_the_hub_cache_layout(seeded_home: Path) -> None:
    repo = seeded_home / "hub" / REPO_FOLDER
    revision = (repo / "refs" / "main").read_text()
    snapshot = repo / "snapshots" / revision
    package = packaged_model_folder(MINILM)
    wanted = sorted(p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file())
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if not p.is_dir()) == wanted
    for relative in wanted:  # each snapshot entry links into blobs/, whose file is a copy of the package's
        entry = snapshot / relative
        assert entry.is_symlink() and entry.resolve().parent == repo / "blobs"
        assert entry.read_bytes() == (package / relative).read_bytes()


def test_seeding_again_changes_nothing(seeded_home: Path) -> None:
    repo = seeded_home / "hub" / REPO_FOLDER
    before = {p: p.stat().st_mtime_ns for p in (repo / "blobs").iterdir()}
    done = cache_model(MINILM, home=seeded_home)
    assert done.returncode == 0, done.stderr
    assert {p: p.stat().st_mtime_ns for p in (repo / "blobs").iterdir()} == before
    assert len(list((repo / "snapshots").iterdir())) == 1


def test_link_mode_points_the_blobs_at_the_folder(tmp_path: Path) -> None:
    done = cache_model(MINILM, "--link", home=tmp_path)
    assert done.returncode == 0, done.stderr
    blob = max((tmp_path / "hub" / REPO_FOLDER / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    assert blob.is_symlink() and blob.resolve() == packaged_model_folder(MINILM) / "model.safetensors"


@pytest.mark.parametrize("unreachable", ["closed endpoint", "HF_HUB_OFFLINE"])
def test_a_hub_id_loads_from_the_cache_with_no_hub(seeded_home: Path, unreachable: str) -> None:
    got = load_in_subprocess(MINILM, seeded_home, offline_flag=unreachable == "HF_HUB_OFFLINE")
    assert got == {
        "class": "BertForSequenceClassification",
        "hubReachable": False,
        "vocab": 30522,
        "labels": 3,
        "pretrainedTensor": True,
    }


def test_pretrained_false_keeps_the_architecture_and_tokenizer_with_random_weights(seeded_home: Path) -> None:
    got = load_in_subprocess(MINILM, seeded_home, pretrained=False)
    assert got["class"] == "BertForSequenceClassification" and got["vocab"] == 30522
    assert got["pretrainedTensor"] is False


def test_a_model_missing_from_the_cache_is_a_clear_error(seeded_home: Path) -> None:
    got = load_in_subprocess("edgetune-tests/no-such-model", seeded_home)
    message = got["error"]
    assert "hf://edgetune-tests/no-such-model" in message
    assert "cannot be reached" in message and "not in the local cache" in message
    assert str(seeded_home / "hub") in message
    assert "edgetune cache-model edgetune-tests/no-such-model --from FOLDER" in message


def test_cache_model_errors_name_the_fix(tmp_path: Path) -> None:
    unknown = cache_model("someone/unknown-model", home=tmp_path)
    assert unknown.returncode == 2
    assert "no installed package is known to carry 'someone/unknown-model'" in unknown.stderr
    assert MINILM in unknown.stderr  # the known ones are listed
    (tmp_path / "empty").mkdir()
    not_a_model = cache_model("someone/model", "--from", str(tmp_path / "empty"), home=tmp_path)
    assert not_a_model.returncode == 2
    assert "is not a Hugging Face model folder (it has no config.json)" in not_a_model.stderr
    bad_id = cache_model("no-slash", "--from", str(packaged_model_folder(MINILM)), home=tmp_path)
    assert bad_id.returncode == 2 and "is not a hub model id of the form ORG/NAME" in bad_id.stderr
    assert not (tmp_path / "hub").exists()  # nothing half-written


def test_every_packaged_model_is_installed() -> None:
    """hack/setup.sh installs models.txt; a known package missing here would fail `edgetune cache-model`."""
    for repo in PACKAGED_MODELS:
        assert (packaged_model_folder(repo) / "config.json").is_file()
