"""setup's Hub resolution against a fake local Hub cache laid out exactly as huggingface_hub writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from local_runner import import_app_module

weights = import_app_module("weights")

COMMIT = "0123456789abcdef0123456789abcdef01234567"

# What each repo holds in the fake cache: the files setup needs plus some it must NOT need to download.
FAKE_REPOS = {
    weights.WAN_ANIMATE_REPO: [
        "config.json",
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "relighting_lora.ckpt",
        "process_checkpoint/det/yolov10m.onnx",
        "process_checkpoint/pose2d/vitpose_h_wholebody.onnx/end2end.onnx",
        "process_checkpoint/pose2d/vitpose_h_wholebody.onnx/end2end.data",
        "process_checkpoint/sam2/sam2_hiera_large.pt",
    ],
    weights.WAN_ANIMATE_DIFFUSERS_REPO: [
        "transformer/config.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer.json",
        "image_encoder/config.json",
        "image_encoder/model.safetensors",
        "image_processor/preprocessor_config.json",
    ],
    weights.DISTILL_LORA_REPO: [weights.DISTILL_LORA_FILE, "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors"],
}


# Repos whose components pin a commit hash: their fake snapshot is at that commit (what a download of it writes).
PINNED = {c.repo_id: c.revision for c in (*weights.CORE_COMPONENTS, weights.FLUX_KONTEXT, weights.DISTILL_LORA)
          if c.revision != "main"}  # fmt: skip


def write_fake_cache(cache: Path, repos: dict[str, list[str]]) -> None:
    """models--org--name/{refs/main, blobs/, snapshots/<commit>/...} as huggingface_hub stores a download."""
    for repo_id, files in repos.items():
        commit = PINNED.get(repo_id, COMMIT)
        repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(commit)
        for name in files:
            blob = repo_dir / "blobs" / f"blob-{abs(hash(name))}"
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(name.encode())
            link = repo_dir / "snapshots" / commit / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(blob)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for component in (*weights.CORE_COMPONENTS, weights.FLUX_KONTEXT, weights.DISTILL_LORA):
        monkeypatch.delenv(f"WAN_ANIMATE_REVISION_{component.name.upper()}", raising=False)


def test_fetch_all_resolves_every_file_from_the_cache(tmp_path: Path, offline: None) -> None:
    write_fake_cache(tmp_path, FAKE_REPOS)
    paths = weights.fetch_all(tmp_path)
    snapshot = tmp_path / f"models--{weights.WAN_ANIMATE_REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert paths.transformer_dir == snapshot
    assert paths.transformer_config.read_bytes() == b"transformer/config.json"
    assert paths.relighting_lora.read_bytes() == b"relighting_lora.ckpt"
    assert paths.detector_onnx.read_bytes() == b"process_checkpoint/det/yolov10m.onnx"
    assert (paths.pose_onnx / "end2end.onnx").is_file()
    assert (paths.diffusers_dir / "vae" / "config.json").is_file()
    assert (paths.diffusers_dir / "image_encoder" / "model.safetensors").is_file()
    assert paths.sam2_checkpoint.read_bytes() == b"process_checkpoint/sam2/sam2_hiera_large.pt"
    assert paths.flux_kontext_dir is None and paths.distill_lora is None


def test_distillation_lora_is_fetched_only_when_asked(tmp_path: Path, offline: None) -> None:
    write_fake_cache(tmp_path, FAKE_REPOS)
    paths = weights.fetch_all(tmp_path, with_distill=True)
    assert paths.distill_lora.name == "wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors"
    assert paths.distill_lora.read_bytes() == weights.DISTILL_LORA_FILE.encode()
    assert weights.DISTILL_LORA.pinned_revision() == weights.DISTILL_LORA_REVISION
    write_fake_cache(tmp_path / "without", {k: v for k, v in FAKE_REPOS.items() if k != weights.DISTILL_LORA_REPO})
    weights.fetch_all(tmp_path / "without")  # not asked: not needed
    with pytest.raises(weights.WeightsUnavailableError, match="distill_lora: lightx2v/Wan2.1-Distill-Loras"):
        weights.fetch_all(tmp_path / "without", with_distill=True)


def test_a_missing_file_offline_names_the_component_and_the_fix(tmp_path: Path, offline: None) -> None:
    repos = {**FAKE_REPOS, weights.WAN_ANIMATE_REPO: [f for f in FAKE_REPOS[weights.WAN_ANIMATE_REPO] if "lora" not in f]}
    write_fake_cache(tmp_path, repos)
    with pytest.raises(weights.WeightsUnavailableError, match="relighting_lora.*HF_HUB_OFFLINE"):
        weights.fetch_all(tmp_path)


def test_an_absent_repo_offline_is_a_clear_error(tmp_path: Path, offline: None) -> None:
    write_fake_cache(tmp_path, {k: v for k, v in FAKE_REPOS.items() if k != weights.WAN_ANIMATE_DIFFUSERS_REPO})
    with pytest.raises(weights.WeightsUnavailableError, match="transformer_config: Wan-AI/Wan2.2-Animate-14B-Diffusers"):
        weights.fetch_all(tmp_path)


def test_flux_is_fetched_only_when_asked(tmp_path: Path, offline: None) -> None:
    write_fake_cache(tmp_path, FAKE_REPOS)
    with pytest.raises(weights.WeightsUnavailableError, match="flux_kontext"):
        weights.fetch_all(tmp_path, with_flux=True)


def test_revision_pin_is_honoured(tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_cache(tmp_path, FAKE_REPOS)
    monkeypatch.setenv("WAN_ANIMATE_REVISION_SAM2", COMMIT)
    assert weights.fetch_component(weights.SAM2, tmp_path).name == COMMIT
    monkeypatch.setenv("WAN_ANIMATE_REVISION_SAM2", "f" * 40)  # a commit the cache does not hold
    with pytest.raises(weights.WeightsUnavailableError):
        weights.fetch_component(weights.SAM2, tmp_path)


def test_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(weights.ENV_CACHE_DIR, str(tmp_path))
    assert weights.default_cache_dir() == tmp_path


def test_pinned_revisions_are_what_the_comments_say(offline: None) -> None:
    """Only the distillation LoRA pins a commit hash (the one found in a public source); the rest follow main."""
    assert weights.DISTILL_LORA.revision == "27ae38da91014b947dd39cc3fa78b97cd7b386dd"
    others = (*weights.CORE_COMPONENTS, weights.FLUX_KONTEXT)
    assert {c.revision for c in others} == {"main"}


def test_a_pinned_commit_is_fetched_even_when_main_moved(tmp_path: Path, offline: None) -> None:
    write_fake_cache(tmp_path, {weights.DISTILL_LORA_REPO: [weights.DISTILL_LORA_FILE]})
    repo_dir = tmp_path / f"models--{weights.DISTILL_LORA_REPO.replace('/', '--')}"
    (repo_dir / "refs" / "main").write_text(COMMIT)  # main now points elsewhere (a newer upload)
    assert weights.fetch_component(weights.DISTILL_LORA, tmp_path).name == weights.DISTILL_LORA_REVISION
